//! Training: the paper's optimiser and schedule ([`optim`]).

pub mod optim;
