//! Blaze's load suite. For now it holds the bare reference server
//! (`blaze-reference`), which gives the hardware ceiling that every
//! benchmark compares Blaze against in the same run.
