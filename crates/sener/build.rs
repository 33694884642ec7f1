//! With the `mpi` feature: compiles `src/train/mpi_shim.c` with the MPI compiler wrapper (`mpicc`,
//! or `$MPICC`) and links the MPI library it names (Open MPI `--showme:link`, MPICH `-link-info`).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MPI").is_none() {
        return;
    }
    mpi::build();
}

#[cfg(feature = "mpi")]
mod mpi {
    use std::process::Command;

    pub fn build() {
        println!("cargo:rerun-if-changed=src/train/mpi_shim.c");
        println!("cargo:rerun-if-env-changed=MPICC");
        let mpicc = std::env::var("MPICC").unwrap_or_else(|_| "mpicc".into());
        cc::Build::new().compiler(&mpicc).file("src/train/mpi_shim.c").compile("sener_mpi_shim");
        let link = Command::new(&mpicc)
            .arg("--showme:link")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .or_else(|| Command::new(&mpicc).arg("-link-info").output().ok().filter(|o| o.status.success()))
            .unwrap_or_else(|| panic!("{mpicc} gives no link flags (install Open MPI: apt-get install openmpi-bin libopenmpi-dev)"));
        for flag in String::from_utf8_lossy(&link.stdout).split_whitespace() {
            if let Some(dir) = flag.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            } else if let Some(lib) = flag.strip_prefix("-l") {
                println!("cargo:rustc-link-lib={lib}");
            } else if let Some(rpath) = flag.strip_prefix("-Wl,-rpath,") {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
            }
        }
    }
}

#[cfg(not(feature = "mpi"))]
mod mpi {
    pub fn build() {}
}
