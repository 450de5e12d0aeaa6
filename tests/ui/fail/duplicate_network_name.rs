// Two networks named `Net` in one invocation: one error, on the second name, and nothing
// more (the first network still compiles, and code using it raises nothing).
alexnet::network! {
    pub Net<3, 32, 32> {
        conv(16, 3) relu fc(10)
    }
    pub Net<3, 64, 64> {
        fc(10)
    }
}

fn main() {
    let _ = Net::summary();
}
