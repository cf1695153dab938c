//! Collaborative loops, where models teach models: a client that reaches teachers and students
//! in-process or over HTTP, ROUGE-L for near-duplicate filtering, and logit distillation data with
//! teacher/student divergences.

pub mod alpaca;
pub mod client;
pub mod distill;
pub mod rouge;
pub mod self_instruct;
