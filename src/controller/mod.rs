//! The RedReg controller (issue 5): redundancy phase monitor, co-information gate,
//! suppression strength, and one call per training step.
