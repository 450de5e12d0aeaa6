// A 7x7 kernel on pool5's 6x6 output: the caret sits on the kernel size of conv6.
alexnet::network! {
    Net<3, 227, 227> {
        conv(96, 11, stride = 4) relu maxpool(3, stride = 2)
        conv(256, 5, pad = 2) relu maxpool(3, stride = 2)
        conv(384, 3, pad = 1) relu maxpool(3, stride = 2)
        conv(256, 7) relu
        fc(10)
    }
}

fn main() {
    let _ = Net::summary();
}
