//! Fused redundancy statistics (issue 4): declared once as a plan, executed per step.
