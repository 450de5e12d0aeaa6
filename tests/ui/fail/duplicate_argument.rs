alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3, stride = 2, stride = 1) relu fc(10)
    }
}

fn main() {}
