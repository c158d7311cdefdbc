//! Link flags of the kdiag binaries.

fn main() {
    // Packed relative relocations (DT_RELR, glibc 2.36+, musl 1.2.4+): the position-independent
    // binary's 1.9 MiB `.rela.dyn`, which the loader reads whole at every start and which stays
    // mapped, shrinks to a few KiB (docs/performance.md: idle memory).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
