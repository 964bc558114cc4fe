//! Quantised linear layers against PyTorch: each kernel on the packed weights equals the
//! same libtorch operator called from Python on the same tensors; dequantising gives the
//! weight the kernel computes with; on SmolLM2, int8 greedy decoding follows float32's,
//! `%quantize none` gives back the float model bit for bit, and LoRA adapters train over an
//! int4 base (QLoRA) with the base untouched.

mod common;

use std::collections::BTreeMap;

use common::{fail, ok, serial};
use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tchlab::models::quantize::{Format, Packed};
use tchlab::session::Session;

#[test]
fn each_kernel_equals_the_pytorch_operator_on_the_same_packed_weights() {
    tch::manual_seed(3);
    let w = Tensor::randn([64, 128], (Kind::Float, Device::Cpu));
    let x = Tensor::randn([3, 128], (Kind::Float, Device::Cpu));
    let mut tensors = vec![("w".to_string(), w.shallow_clone()), ("x".to_string(), x.shallow_clone())];
    for (name, format) in [("int8", Format::Int8), ("int4", Format::Int4 { group: 32 }), ("int4g64", Format::Int4 { group: 64 }), ("fp16", Format::Fp16)] {
        let packed = Packed::pack(&w, format).unwrap();
        let y = packed.matmul(&x, None).unwrap();
        // The dequantised weight is the one the kernel computes with (to bfloat16 activations).
        let reference = x.matmul(&packed.dequantize().unwrap().tr());
        let relative = common::max_abs_diff(&y, &reference) / reference.abs().max().double_value(&[]);
        assert!(relative < 2e-2, "{name}: kernel against its own dequantised weight: {relative:e}");
        let error = common::max_abs_diff(&packed.dequantize().unwrap(), &w) / w.abs().max().double_value(&[]);
        let bound = match format {
            Format::Int8 => 1e-2,
            Format::Int4 { .. } => 0.1,
            Format::Fp16 => 1e-3,
        };
        assert!(error < bound, "{name}: quantisation error {error:e}");
        tensors.push((format!("{name}.y"), y));
        for (part, t) in packed.kernel_tensors() {
            tensors.push((format!("{name}.{part}"), t));
        }
    }
    let dir = common::scratch("quantize-kernels");
    tchlab::checkpoint::safetensors::write(&dir.join("k.safetensors"), &tensors, &BTreeMap::new()).unwrap();
    common::python_agrees(
        r#"
import sys, warnings, torch
from safetensors.torch import load_file
t = load_file(sys.argv[1] + "/k.safetensors")
x, w = t["x"], t["w"]
warnings.simplefilter("ignore")
ys = {
    "int8": torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), t["int8.q"], t["int8.scales"]),
    "int4": torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), t["int4.packed"], 32, t["int4.scale_zero"]),
    "int4g64": torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), t["int4g64.packed"], 64, t["int4g64.scale_zero"]),
    "fp16": torch.fbgemm_linear_fp16_weight_fp32_activation(x, torch.fbgemm_pack_gemm_matrix_fp16(w), None),
}
for name, y in ys.items():
    torch.testing.assert_close(t[name + ".y"], y.float(), rtol=1e-6, atol=1e-6, msg=name)
"#,
        &dir,
    );
}

#[test]
fn a_group_that_does_not_divide_and_a_kernel_that_does_not_fit_are_refused_by_name() {
    let w = Tensor::zeros([48, 96], (Kind::Float, Device::Cpu));
    assert!(Packed::pack(&w, Format::Int4 { group: 64 }).unwrap_err().to_string().contains("96 inputs do not divide into groups of 64"));
    assert!(Packed::pack(&Tensor::zeros([10, 64], (Kind::Float, Device::Cpu)), Format::Int4 { group: 32 })
        .unwrap_err()
        .to_string()
        .contains("multiples of 16"));
    assert!(Packed::pack(&w, Format::Int4 { group: 48 }).unwrap_err().to_string().contains("32, 64 or 128"));
}

fn smollm2() -> Session {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("smollm2.json")).unwrap()).unwrap();
    let mut s = Session::new();
    ok(&mut s, &format!("%device cpu\n%load {}", reference["file"].as_str().unwrap()));
    s
}

/// The greedy continuation of `prompt`, `n` tokens.
fn greedy(s: &mut Session, prompt: &str, n: usize) -> Vec<i64> {
    let generated = ok(s, &format!("%generate \"{prompt}\" --max-tokens {n}"));
    serde_json::from_value(generated["generated_ids"].clone()).unwrap()
}

#[test]
fn smollm2_in_int8_decodes_as_float32_does_and_none_gives_the_float_model_back() {
    let _serial = serial();
    let mut s = smollm2();
    let prompts = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):"];
    // How many greedy tokens must agree: measured 16 of 16 on these prompts on this
    // machine's CPU; 8 leaves room for another CPU's rounding.
    const AGREE: usize = 8;
    let float: Vec<Vec<i64>> = prompts.iter().map(|p| greedy(&mut s, p, 16)).collect();
    let checksum = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    let quantized = ok(&mut s, "%quantize int8");
    assert_eq!(quantized["layers"].as_array().unwrap().len(), 30 * 7 + 1, "every projection of every block, and the tied head");
    assert!(quantized["bytes_after"].as_i64().unwrap() * 3 < quantized["bytes_before"].as_i64().unwrap());
    for (prompt, reference) in prompts.iter().zip(&float) {
        let int8 = greedy(&mut s, prompt, 16);
        assert_eq!(int8[..AGREE], reference[..AGREE], "{prompt}: int8 greedy against float32");
    }
    ok(&mut s, "%quantize none");
    assert_eq!(ok(&mut s, "%status --checksum")["weights_checksum"], checksum);
    for (prompt, reference) in prompts.iter().zip(&float) {
        assert_eq!(&greedy(&mut s, prompt, 16), reference, "{prompt}: back in float, exactly as before");
    }
}

#[test]
fn lora_adapters_train_over_an_int4_base_and_leave_it_as_it_was() {
    let _serial = serial();
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model llama --layers 2 --heads 2 --kv-heads 1 --dim 64\n%set batch=16 lr=3e-3");
    ok(&mut s, "%train 20");
    let base = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    let e = fail(&mut s, "%quantize int4 --group 32");
    assert!(e.message.contains("down_proj` has 176 inputs") && e.message.contains("--skip down_proj"), "{e}");
    let quantized = ok(&mut s, "%quantize int4 --group 32 --skip down_proj");
    let layers = quantized["layers"].as_array().unwrap();
    for l in layers {
        let (name, format, kept) = (l["layer"].as_str().unwrap(), l["format"].as_str().unwrap(), l["kept"].as_str().unwrap_or(""));
        match name {
            n if n.ends_with("down_proj") => assert_eq!((format, kept), ("float", "--skip")),
            "lm_head" => assert!(format == "float" && kept.contains("multiples of 16"), "the head has 12 outputs: {kept}"),
            _ => assert_eq!(format, "int4", "{name}"),
        }
    }
    let e = fail(&mut s, "%step");
    assert!(e.message.contains("%quantize none") && e.message.contains("QLoRA"), "{e}");
    ok(&mut s, "%lora r=8 targets=all-linear");
    let first = ok(&mut s, "%step")["loss"].as_f64().unwrap();
    let last = ok(&mut s, "%train 40")["loss"].as_f64().unwrap();
    assert!(last < first, "the adapters learn over the int4 base: {first} → {last}");
    let e = fail(&mut s, "%lora merge");
    assert!(e.message.contains("%quantize none"), "{e}");
    ok(&mut s, "%lora drop");
    assert_eq!(ok(&mut s, "%status --checksum")["weights_checksum"], base, "the base under the adapters never changed");
    ok(&mut s, "%quantize none");
}
