/* The MPI calls of sener's data-parallel training (src/train/collective.rs), compiled with mpicc
 * by build.rs under the `mpi` feature: a C shim keeps Rust free of the MPI implementation's
 * handle types (Open MPI's MPI_COMM_WORLD is a pointer, MPICH's an int). Counts above INT_MAX
 * are sent in chunks. Errors return the MPI error code (MPI_ERRORS_RETURN on the world). */
#include <limits.h>
#include <mpi.h>

int sener_mpi_init(int *rank, int *size) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return rc;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    rc = MPI_Comm_rank(MPI_COMM_WORLD, rank);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Comm_size(MPI_COMM_WORLD, size);
}

static int allreduce(void *buf, long n, MPI_Datatype t, int width) {
    char *p = (char *)buf;
    while (n > 0) {
        int k = n > INT_MAX ? INT_MAX : (int)n;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, k, t, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        p += (long)k * width;
        n -= k;
    }
    return MPI_SUCCESS;
}

static int bcast(void *buf, long n, MPI_Datatype t, int width) {
    char *p = (char *)buf;
    while (n > 0) {
        int k = n > INT_MAX ? INT_MAX : (int)n;
        int rc = MPI_Bcast(p, k, t, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        p += (long)k * width;
        n -= k;
    }
    return MPI_SUCCESS;
}

int sener_mpi_allreduce_sum_f32(float *buf, long n) { return allreduce(buf, n, MPI_FLOAT, 4); }
int sener_mpi_allreduce_sum_f64(double *buf, long n) { return allreduce(buf, n, MPI_DOUBLE, 8); }
int sener_mpi_bcast_f32(float *buf, long n) { return bcast(buf, n, MPI_FLOAT, 4); }
int sener_mpi_bcast_f64(double *buf, long n) { return bcast(buf, n, MPI_DOUBLE, 8); }
int sener_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }
int sener_mpi_finalize(void) { return MPI_Finalize(); }
