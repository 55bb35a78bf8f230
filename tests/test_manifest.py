"""runtime/manifest.py: the typed manifest. JSON in and out unchanged (the compiled plan's byte for byte), refusals
that name the field and the fix, and the facts derived once (the KV cache's buffers). The C reader is held to
it on every plan the tests compile: tests/test_c_runtime.py."""
import json
from dataclasses import replace

import pytest
from manifests import sample_manifest

from arvc.quant.kv import KVRegion, kv_regions
from arvc.runtime.manifest import Manifest, ManifestError, ManifestIntegrityError, PlanRecipe
from arvc.runtime.plan import MANIFEST, PlanError, read_manifest, seal_manifest

# what compile writes, in its order
KEYS = ["format", "schema_version", "arvc_version", "created", "source", "model", "numerics", "schedule", "geometry",
        "resolution", "precision", "recipe", "stages", "memory", "target", "versions", "files", "verification"]


def test_json_round_trip_keeps_values_and_key_order():
    m = sample_manifest(stages=("text_encoder",), name="int8", weights="int8", kv_cache="fp8", kv_sink="fp16",
                        keep=(("blocks.0.*", "first block"),), quantized_weights=("blocks.1.ffn.0.weight",))
    data = m.to_json()
    assert list(data) == KEYS and list(data["stages"]) == ["text", "dit", "vae", "text_encoder"]
    assert list(data["stages"]["vae"]) == ["graphs", "weights", "weights_dtype", "compute"]
    assert data["recipe"]["keep"] == {"blocks.0.*": "first block"} and data["model"]["dit"]["patch_size"] == [1, 2, 2]
    again = Manifest.from_json(json.dumps(data))
    assert again == m and again.to_json() == data
    sealed = seal_manifest(data)
    assert Manifest.from_json(sealed).to_json() == json.loads(sealed)  # manifest_sha256 kept


def test_a_compiled_manifest_round_trips_byte_for_byte(tiny_plan):
    plan, _ = tiny_plan
    m = read_manifest(plan)
    assert seal_manifest(m.to_json()) == (plan / MANIFEST).read_text()
    assert m.model.text_encoder is not None and m.stages.text_encoder.graph == "text_encoder.onnx"


def _edited(edit) -> dict:
    data = sample_manifest().to_json()
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["resolution"].pop("fps"), r"^resolution\.fps is missing; recompile the plan"),
    (lambda d: d["geometry"].update(window="6"), r"^geometry\.window must be an integer, not \"6\"; recompile"),
    (lambda d: d["files"]["dit.onnx"].update(bytes=True), r"^files\[\"dit\.onnx\"\]\.bytes must be an integer"),
    (lambda d: d["model"]["dit"].update(patch_size=[1, 2]), r"^model\.dit\.patch_size must be a list of 3"),
    (lambda d: d["stages"].update(dit_x={}), r"^stages\.dit_x is not a field arvc .* knows: a newer arvc wrote .*upgrade"),
    (lambda d: d["model"]["dit"].update(num_heads=3), r"^model\.dit\.num_heads 3 must divide dim 64; recompile"),
    (lambda d: d["recipe"].update(kv_cache="fp4"), r"^recipe: .*KV-cache format 'fp4' must be one of"),
    (lambda d: d["recipe"].update(version=9), r"^recipe: recipe version 9 is newer than this arvc reads"),
    (lambda d: d["resolution"].update(cache_tokens=7),
     r"^resolution\.cache_tokens is 7, but the model's patch size and the geometry make it 24; recompile"),
    (lambda d: d["files"].pop("vae.onnx"), r"^stages\.vae names \"vae\.onnx\", which 'files' does not list"),
    (lambda d: d["stages"]["dit"].pop("graph"), r"^stages\.dit: a stage has either 'graph' or 'graphs'"),
    (lambda d: d.update(schema_version=3), r"^plan schema version 3 is newer than this arvc reads.*upgrade arvc"),
    (lambda d: d.update(format="other"), r"^not an arvc plan manifest \(format must be 'arvc-plan'\)"),
])
def test_a_manifest_arvc_does_not_read_is_refused_naming_the_field_and_the_fix(edit, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(_edited(edit))


def test_a_missing_schema_version_or_broken_json_is_an_integrity_error():
    with pytest.raises(ManifestIntegrityError, match="schema_version is missing"):
        Manifest.from_json(_edited(lambda d: d.pop("schema_version")))
    with pytest.raises(ManifestIntegrityError, match="not valid JSON"):
        Manifest.from_json('{"format": ')


def test_fields_with_a_default_may_be_absent():
    """Recipe fields have defaults (a plan written before a field existed reads as it always did)."""
    m = Manifest.from_json(_edited(lambda d: [d["recipe"].pop(k) for k in ("kv_cache", "kv_sink", "quantized_weights")]))
    assert (m.recipe.kv_cache, m.recipe.kv_sink, m.recipe.quantized_weights) == ("fp32", None, ())


def test_a_plan_with_a_field_arvc_does_not_read_is_a_plan_error_naming_the_file(tiny_plan, tmp_path):
    plan, _ = tiny_plan
    (tmp_path / MANIFEST).write_text(seal_manifest({**json.loads((plan / MANIFEST).read_text()), "extra": 1}))
    with pytest.raises(PlanError, match=rf"^{tmp_path / MANIFEST}: extra is not a field"):
        read_manifest(tmp_path, verify_files=False)


def test_kv_regions_one_cache_or_the_sink_and_the_ring_with_a_scratch_row_each():
    assert kv_regions("int8", None, 24, 12) == (KVRegion("", "int8", 24),)
    assert kv_regions("nvfp4", "fp16", 24, 12) == (KVRegion("sink_", "fp16", 13), KVRegion("", "nvfp4", 13))
    assert kv_regions("nvfp4", "fp16", 24, 0) == (KVRegion("", "nvfp4", 24),)  # no sink frames: nothing to split
    m = sample_manifest(name="s", kv_cache="nvfp4", kv_sink="fp16")
    assert (m.cache_rows, m.sink_rows, m.tokens_per_frame) == (24, 12, 4)  # window 6 x 4 tokens, sink 3 x 4
    assert m.kv_regions() == kv_regions("nvfp4", "fp16", 24, 12)


def test_derived_shapes_and_recipe_records():
    m = replace(sample_manifest(), recipe=PlanRecipe(
        name="q", weights="int8", layer_formats=(("blocks.1.*", "fp8"),), activations="static",
        quantized_weights=("blocks.0.ffn.0.weight", "blocks.1.ffn.0.weight"),
        calibration={"timesteps": [1000.0, 500.0, 0.0]}))
    assert m.latent_block_shape == (1, 16, 3, 4, 4) and m.latent_frame_shape == (1, 16, 1, 4, 4)
    assert m.temporal_factor == 4 and m.tokens_per_block == 12
    assert m.recipe.weight_formats == {"blocks.0.ffn.0": "int8", "blocks.1.ffn.0": "fp8"}
    assert m.recipe.act_timesteps == (1000.0, 500.0, 0.0)


def test_a_schema_1_plan_reads_its_stored_tensorrt_graphs_left_unread():
    """Schema 2 stopped storing dit_trt / text_trt (derived at load); a schema 1 plan still loads."""
    data = sample_manifest().to_json()
    v1 = json.loads(json.dumps(data))
    v1["schema_version"] = 1
    v1["stages"]["dit_trt"] = {**data["stages"]["dit"], "graph": "dit_trt.onnx", "plugins": {"ops": []}}
    m = Manifest.from_json(v1)
    assert m.schema_version == 1 and [name for name, _ in m.stages.items()] == ["text", "dit", "vae"]
    data["schema_version"] = 3
    with pytest.raises(ManifestError, match="newer than this arvc reads"):
        Manifest.from_json(data)
