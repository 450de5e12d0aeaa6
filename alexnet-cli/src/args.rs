//! The arguments several commands share: `--net`, `--device` and `--precision`.

use alexnet::ir::{Plan, Precision};
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

/// `--precision`: [`Precision`] as the command line spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 products, exactly the CPU's functions (the reference).
    #[default]
    F32,
    /// The convolutions' and fully connected layers' products (forward, and in training
    /// the gradients) on tensor cores, tf32 inputs and f32 sums (a GPU only).
    Tf32,
    /// The convolutions' and fully connected layers' forward products from bf16 operands,
    /// f32 sums (on a GPU on tensor cores, in training the gradients too).
    Bf16,
    /// As bf16 with the operands rounded to f16 (a GPU only; inference only: training in
    /// f16 needs a loss scale, not built yet).
    F16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Tf32 => Precision::Tf32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F16 => Precision::F16,
        }
    }
}

/// `--device` and `--precision`, as every command that runs a network takes them.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto (the GPU when there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The arithmetic of the forward pass: f32 and bf16 anywhere, tf32 on a GPU.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            device: "auto".into(),
            precision: PrecisionArg::F32,
        }
    }
}

impl DeviceArgs {
    /// The device named, ready to run in the precision asked for.
    pub fn open(&self) -> alexnet::runtime::Result<Device> {
        self.open_named(&self.device, "--device")
    }

    /// Device `spec` (`--device`'s syntax; `flag` says which flag named it: `--device`, or
    /// `--towers` for a tower's) in the precision asked for. `auto` that falls back to the
    /// CPU computes f32 there, saying so in one line; a CPU asked for by name with another
    /// precision is an error that says what to give instead.
    pub fn open_named(&self, spec: &str, flag: &str) -> alexnet::runtime::Result<Device> {
        let device = Device::parse(spec)?;
        let precision = Precision::from(self.precision);
        let cpu = matches!(device, Device::Cpu(_));
        if spec == "auto" && cpu && !precision.on_cpu() {
            eprintln!("alexnet: precision {precision} needs a GPU; computing in f32 on the CPU");
            return Ok(device);
        }
        device.with_precision(precision).map_err(|e| match e {
            alexnet::runtime::Error::Invalid(m) if cpu => alexnet::runtime::Error::Invalid(
                format!("{m} (give --precision f32, or a GPU in {flag})"),
            ),
            e => e,
        })
    }
}
