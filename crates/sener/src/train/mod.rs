//! Training: the paper's optimiser and schedule ([`optim`]) and the loop ([`trainer`]).

pub mod calibrate;
pub mod card;
pub mod collective;
pub mod optim;
pub mod recompute;
pub mod trainer;
