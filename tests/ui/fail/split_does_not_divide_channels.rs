// With `split 2` every layer's channels are shared between the two towers.
alexnet::network! {
    Net<3, 64, 64> split 2 {
        conv(95, 5) relu maxpool(2)
        fc(10)
    }
}

fn main() {}
