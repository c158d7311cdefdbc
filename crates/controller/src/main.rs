//! The `kdiag` binary. Everything lives in the library; this only hands over the arguments.

fn main() -> std::process::ExitCode {
    kdiag_controller::main()
}
