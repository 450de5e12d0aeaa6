//! The networks the example, the tests and the benches use, declared with the DSL.

crate::network! {
    /// The paper's AlexNet (Krizhevsky, Sutskever, Hinton 2012): 227x227 input, grouped
    /// convolutions where the paper's two towers do not talk (conv2, conv4, conv5), LRN
    /// after conv1 and conv2 (within each tower), overlapping 3x3/2 max pooling, dropout
    /// before fc6 and fc7.
    pub AlexNet<3, 227, 227> split 2 {
        conv(96, 11, stride = 4) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv(256, 5, pad = 2, groups = 2) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv(384, 3, pad = 1) relu
        conv(384, 3, pad = 1, groups = 2) relu
        conv(256, 3, pad = 1, groups = 2) relu maxpool(3, stride = 2)
        dropout(0.5) fc(4096) relu
        dropout(0.5) fc(4096) relu
        fc(1000) softmax
    }

    /// torchvision's AlexNet variant ("One weird trick", Krizhevsky 2014): 224x224 input,
    /// 64/192/384/256/256 filters, conv1 padded by 2, no LRN, no groups.
    pub TorchvisionAlexNet<3, 224, 224> {
        conv(64, 11, stride = 4, pad = 2) relu maxpool(3, stride = 2)
        conv(192, 5, pad = 2) relu maxpool(3, stride = 2)
        conv(384, 3, pad = 1) relu
        conv(256, 3, pad = 1) relu
        conv(256, 3, pad = 1) relu maxpool(3, stride = 2)
        dropout(0.5) fc(4096) relu
        dropout(0.5) fc(4096) relu
        fc(1000)
    }

    /// A small net that uses every layer kind of the paper (average pooling included; not
    /// `tanh`), for fast tests.
    pub SmallNet<3, 32, 32> split 2 {
        conv(16, 5, stride = 1, pad = 2) relu lrn(3, alpha = 1e-3, beta = 0.75, k = 1.0) maxpool(3, stride = 2)
        conv(32, 3, pad = 1, groups = 2) relu avgpool(2)
        conv(32, 3, pad = 1) relu maxpool(3, stride = 2)
        dropout(0.5) fc(64) relu fc(10) softmax
    }
}
