// 1000000 x 16 x 32 x 32 weights: more than a 32-bit index can address.
alexnet::network! {
    Net<3, 32, 32> {
        conv(16, 3, pad = 1) relu fc(1000000)
    }
}

fn main() {}
