fn main() {
    println!("replhub {}", env!("CARGO_PKG_VERSION"));
}
