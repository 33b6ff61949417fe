use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ibench_coordinator::cli::Cli::parse();
    ibench_coordinator::cli::main(cli)
}
