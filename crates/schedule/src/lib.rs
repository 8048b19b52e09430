//! Forward-process arithmetic of Ho et al. 2020 (DDPM) and later papers, in f64.
