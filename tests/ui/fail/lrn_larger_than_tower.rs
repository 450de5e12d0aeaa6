// Each tower of a split network has only 4 of conv1's 8 channels.
alexnet::network! {
    Net<3, 32, 32> split 2 {
        conv(8, 3) relu lrn(5) fc(10)
    }
}

fn main() {}
