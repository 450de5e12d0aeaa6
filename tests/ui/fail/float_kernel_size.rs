// The message quotes the value as written: `5.0`, not `5`.
alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 5.0) relu fc(10)
    }
}

fn main() {}
