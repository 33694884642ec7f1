//! AdamW + clipping + schedule against torch.optim.AdamW, clip_grad_norm_ and
//! get_linear_schedule_with_warmup (fixture written by tools/make_fixtures.py).

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use sener::train::optim::{linear_schedule, AdamW, AdamWConfig, GroupConfig};

#[test]
fn adamw_matches_torch_for_six_steps() {
    let f = candle_core::safetensors::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw.safetensors"), &Device::Cpu)
        .unwrap();
    let pd = Var::from_tensor(&f["p_decay.0"]).unwrap();
    let pp = Var::from_tensor(&f["p_plain.0"]).unwrap();
    let groups = vec![GroupConfig { lr: 4e-2, weight_decay: 0.01 }, GroupConfig { lr: 7e-2, weight_decay: 0.0 }];
    let mut opt = AdamW::new(vec![("d".into(), pd.clone(), 0), ("p".into(), pp.clone(), 1)], groups, AdamWConfig::default()).unwrap();
    for step in 0..6 {
        // Gradients of Σ p ⊙ g are exactly g.
        let loss = ((pd.as_tensor() * &f[&format!("g_decay.{step}")]).unwrap().sum_all().unwrap()
            + (pp.as_tensor() * &f[&format!("g_plain.{step}")]).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let info = opt.step(&grads, linear_schedule(step, 2, 6)).unwrap();
        assert!(info.grad_norm > 1.0, "the fixture's gradients are clipped");
        for (var, name) in [(&pd, "p_decay"), (&pp, "p_plain")] {
            let want: &Tensor = &f[&format!("{name}.{}", step + 1)];
            let d = (var.as_tensor() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "step {step} {name}: {d}");
        }
    }
    // Exact resume: a fresh optimiser over copies of the parameters, given the saved state and
    // step, takes the same next step as the original.
    let state = opt.state_tensors();
    assert_eq!(state.len(), 4);
    let (qd, qp) = (Var::from_tensor(pd.as_tensor()).unwrap(), Var::from_tensor(pp.as_tensor()).unwrap());
    let groups = vec![GroupConfig { lr: 4e-2, weight_decay: 0.01 }, GroupConfig { lr: 7e-2, weight_decay: 0.0 }];
    let mut resumed = AdamW::new(vec![("d".into(), qd.clone(), 0), ("p".into(), qp.clone(), 1)], groups, AdamWConfig::default()).unwrap();
    resumed.load_state(&state, opt.step, Path::new("state")).unwrap();
    let g = |a: &Var, b: &Var| {
        ((a.as_tensor() * &f["g_decay.0"]).unwrap().sum_all().unwrap() + (b.as_tensor() * &f["g_plain.0"]).unwrap().sum_all().unwrap())
            .unwrap()
            .backward()
            .unwrap()
    };
    opt.step(&g(&pd, &pp), 0.5).unwrap();
    resumed.step(&g(&qd, &qp), 0.5).unwrap();
    for (a, b) in [(&pd, &qd), (&pp, &qp)] {
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), b.as_tensor().to_vec1::<f32>().unwrap());
    }
}
