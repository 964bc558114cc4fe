//! Quantised linear layers against PyTorch: each kernel on the packed weights equals the
//! same libtorch operator called from Python on the same tensors; dequantising gives the
//! weight the kernel computes with; on SmolLM2, int8 greedy decoding follows float32's,
//! `%quantize none` gives back the float model bit for bit, and LoRA adapters train over an
//! int4 base (QLoRA) with the base untouched. Pruning reaches the sparsity asked in every
//! layer (2:4: exactly two zeros in every four inputs), and the zeros stay through
//! training, rewind and resume.

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
    tchlab::formats::safetensors::write(&dir.join("k.safetensors"), &tensors, &BTreeMap::new()).unwrap();
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

/// The weights of the model's inner linear layers (the projections), read from a
/// transformers checkpoint the session writes into `dir/name`.
fn projections(s: &mut Session, dir: &std::path::Path, name: &str) -> Vec<(String, Tensor)> {
    ok(s, &format!("%save {} --hf", dir.join(name).display()));
    let mut weights = tchlab::formats::safetensors::read(&dir.join(name).join("model.safetensors")).unwrap();
    weights.retain(|(n, _)| n.ends_with("proj.weight"));
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    weights
}

fn zeros(w: &Tensor) -> i64 {
    w.eq(0.0).sum(Kind::Int64).int64_value(&[])
}

/// Every weight zero in `pruned` is zero in `later`, and the others moved.
fn still_pruned(pruned: &[(String, Tensor)], later: &[(String, Tensor)], what: &str) {
    assert_eq!(pruned.len(), later.len());
    for ((name, p), (_, l)) in pruned.iter().zip(later) {
        let mask = p.eq(0.0);
        assert_eq!(zeros(&l.masked_select(&mask)), zeros(p), "{what}: {name} has weights back that were pruned");
        assert!(common::max_abs_diff(p, l) > 0.0, "{what}: {name} did not train");
    }
}

fn llama_training() -> Session {
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model llama --layers 2 --heads 2 --kv-heads 1 --dim 64\n%set batch=16 lr=3e-3");
    ok(&mut s, "%train 20");
    s
}

#[test]
fn pruning_reaches_its_sparsity_in_every_layer_and_the_zeros_stay_through_training_rewind_and_resume() {
    let _serial = serial();
    let dir = common::scratch("prune");
    let mut s = llama_training();
    ok(&mut s, "%snapshot dense");
    let dense = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    let pruned = ok(&mut s, "%prune --sparsity 0.5 --eval");
    let layers = pruned["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2 * 7, "q, k, v, o, gate, up and down in each block; the head is left whole");
    for l in layers {
        let n = l["shape"][0].as_i64().unwrap() * l["shape"][1].as_i64().unwrap();
        assert_eq!(l["sparsity"].as_f64().unwrap(), (n / 2) as f64 / n as f64, "{l}");
    }
    assert!(pruned["before"]["loss"].as_f64().unwrap().is_finite() && pruned["after"]["loss"].as_f64().unwrap().is_finite());
    let at_prune = projections(&mut s, &dir, "pruned");
    for (name, w) in &at_prune {
        assert_eq!(zeros(w), w.numel() as i64 / 2, "{name}: magnitude pruning compares the whole layer");
    }

    ok(&mut s, "%train 10\n%snapshot trained");
    let trained = projections(&mut s, &dir, "trained");
    still_pruned(&at_prune, &trained, "%train");
    ok(&mut s, &format!("%save {}", dir.join("run").display()));
    ok(&mut s, "%rewind dense");
    assert_eq!(ok(&mut s, "%status --checksum")["weights_checksum"], dense, "a snapshot from before %prune has the dense weights");
    ok(&mut s, "%step");
    assert!(projections(&mut s, &dir, "dense-again").iter().all(|(_, w)| zeros(w) == 0), "and no masks");
    ok(&mut s, "%rewind trained\n%step 3");
    still_pruned(&trained, &projections(&mut s, &dir, "rewound"), "%rewind then %step");

    let mut resumed = Session::new();
    ok(&mut resumed, &format!("%device cpu\n%load {}", dir.join("run").display()));
    ok(&mut resumed, "%step 3");
    still_pruned(&trained, &projections(&mut resumed, &dir, "resumed"), "resume then %step");
    ok(&mut resumed, "%lora r=4 targets=all-linear\n%train 5\n%lora merge");
    still_pruned(&trained, &projections(&mut resumed, &dir, "merged"), "adapters trained and merged");
}

#[test]
fn two_in_four_zeroes_exactly_two_of_every_four_inputs_and_wanda_each_row_alike() {
    let _serial = serial();
    let dir = common::scratch("prune-patterns");
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%model llama --layers 1 --heads 2 --kv-heads 1 --dim 64 --vocab 16");
    let e = fail(&mut s, "%prune --sparsity 0.5 --method wanda");
    assert!(e.message.contains("%data"), "Wanda needs data: {e}");
    let structured = ok(&mut s, "%prune --pattern 2:4");
    assert_eq!(structured["pattern"], "2:4");
    for (name, w) in projections(&mut s, &dir, "two-four") {
        let per_group = w.eq(0.0).reshape([-1, 4]).sum_dim_intlist([1].as_slice(), false, Kind::Int64);
        assert!(per_group.eq(2).all().int64_value(&[]) == 1, "{name}: a group of four without exactly two zeros");
    }

    let mut s = llama_training();
    let magnitude_rows = {
        let mut m = llama_training();
        ok(&mut m, "%prune --sparsity 0.25");
        projections(&mut m, &dir, "magnitude")
    };
    let wanda = ok(&mut s, "%prune --sparsity 0.25 --method wanda --calib 2");
    assert_eq!(wanda["method"], "wanda");
    let mut differs = false;
    for ((name, w), (_, m)) in projections(&mut s, &dir, "wanda").iter().zip(&magnitude_rows) {
        let cols = w.size()[1];
        let per_row = w.eq(0.0).sum_dim_intlist([1].as_slice(), false, Kind::Int64);
        assert!(per_row.eq(cols / 4).all().int64_value(&[]) == 1, "{name}: Wanda zeroes a quarter of every row");
        differs |= !w.eq(0.0).equal(&m.eq(0.0));
    }
    assert!(differs, "the input norms change which weights Wanda prunes");
}
