//! With the `tch` feature, gives this crate's test executables an rpath to libtorch (see
//! `build-support`); without it, does nothing, so the pure crate builds without libtorch.

fn main() {
    #[cfg(feature = "tch")]
    build_support::link_libtorch();
}
