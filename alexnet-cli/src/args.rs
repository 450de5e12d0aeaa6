//! The arguments several commands share: `--net` and `--device`.

use alexnet::ir::Plan;
use alexnet::nets::{AlexNet, SmallNet, TorchvisionAlexNet};
use alexnet::runtime::Device;
use clap::ValueEnum;

/// `--net`: one of the networks of [`alexnet::nets`].
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Net {
    /// The paper's AlexNet (3x227x227, grouped convs, LRN).
    Alexnet,
    /// torchvision's variant (3x224x224).
    Torchvision,
    /// A small test net (3x32x32).
    Small,
}

impl Net {
    /// Every network, in the order of `--help`.
    pub fn all() -> [Net; 3] {
        [Net::Alexnet, Net::Torchvision, Net::Small]
    }

    /// The name `--net` takes (and the default run folder, `runs/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Net::Alexnet => "alexnet",
            Net::Torchvision => "torchvision",
            Net::Small => "small",
        }
    }

    /// The network's plan.
    pub fn plan(self) -> &'static Plan {
        match self {
            Net::Alexnet => AlexNet::plan(),
            Net::Torchvision => TorchvisionAlexNet::plan(),
            Net::Small => SmallNet::plan(),
        }
    }
}

/// `--device`, as every command that runs a network takes it.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto (the GPU when there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            device: "auto".into(),
        }
    }
}

impl DeviceArgs {
    /// The device named, ready to run.
    pub fn open(&self) -> alexnet::runtime::Result<Device> {
        Device::parse(&self.device)
    }
}
