fn main() {
    println!("renku-ssh-operator: not built yet");
}
