alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3) relu dropout(1.0) fc(10)
    }
}

fn main() {}
