fn main() {
    std::process::exit(alitx::cli::main());
}
