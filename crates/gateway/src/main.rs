fn main() {
    println!("renku-ssh-gateway: not built yet");
}
