//! DDPM training and sampling on libtorch (Ho et al. 2020, Alg. 1 and 2).
