"""Runs every test on 8 fake CPU devices, so sharded code paths run in CI without accelerators.
Compiled programs go to one persistent compilation cache per session, shared with the `tpt`
subprocesses the end-to-end tests start (each smoke run compiles the same programs: 33 s cold,
19 s warm on 2 cores)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="tpt-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# TPT_TEST_MEMORY=FILE: one line per test that raised a memory high-water mark (this process's
# or any finished child's, in GiB), to find what drives the suite's peak.
if os.environ.get("TPT_TEST_MEMORY"):
    import resource

    import pytest

    _marks = {"self": 0, "children": 0}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        yield
        raised = []
        for who, flag in (("self", resource.RUSAGE_SELF), ("children", resource.RUSAGE_CHILDREN)):
            kib = resource.getrusage(flag).ru_maxrss
            if kib > _marks[who]:
                _marks[who] = kib
                raised.append(f"{who} {kib / 2**20:.2f}")
        if raised:
            with open(os.environ["TPT_TEST_MEMORY"], "a") as f:
                f.write(f"{item.nodeid}: {', '.join(raised)} GiB\n")


# The slow tests: whole runs of the loop (subprocesses, several processes, kill -9 and resume)
# and the longest parity checks, each over ~20 s on 2 cores (seconds as measured in CI on
# 2026-12-03, under load). `pytest -q` (the README's test command) leaves them out; `pytest -q
# -m slow` runs them, and .ci/run runs both. A name matches every parametrization of it.
SLOW = (
    "tests/test_bad_input.py::test_same_config_same_run",  # 2-process run, preempted: 314
    "tests/test_bad_input.py::test_kill_9_of_one_process_stops_the_others",
    "tests/test_bad_input.py::test_eval_of_a_model_loaded_from_disk_equals_the_one_resharded",  # 29
    "tests/test_bad_input.py::test_empty_round_stops_cleanly",  # 27
    "tests/test_bad_input.py::test_skipped_lines_long_prompts_and_carry",  # 26
    "tests/test_plan.py::test_multi_host_train_estimate_against_xla_across_processes",  # 68
    "tests/test_plan.py::test_train_estimate_against_xla",  # 27 each
    "tests/test_code_task.py::test_a_code_round_runs_the_loop",  # 66
    "tests/test_plugin_task.py::test_a_plugin_task_runs_the_loop",  # 58
    "tests/test_math_task.py::test_a_math_round_runs_the_loop",  # 42
    "tests/test_python_api.py::test_a_round_from_python",  # ~60 alone
    "tests/test_engine.py::test_samples_equal_the_uncached_forward_pass[gemma",  # 50, 44
    "tests/test_cli.py::test_shipped_smollm2_exports_what_transformers_loads",  # 55
    "tests/test_run.py::",  # the smoke run and its resumes, --force, kill -9: 28 to 53 each
    "tests/test_generate_api.py::test_key_ids_make_chunked_sampling_equal_one_call",  # 44
    "tests/test_generate_api.py::test_n_samples_stop_tokens_and_text",  # 28
    "tests/test_generate_api.py::test_cli_generate_streams_the_greedy_answer",  # 27
    "tests/test_multiprocess.py::test_engine_samples_across_two_processes",  # 42, 32
    "tests/test_gguf_io.py::test_tensors_equal_transformers[gemma3]",  # 38
    "tests/test_train.py::test_remat_and_scan_change_nothing_beyond_float_tolerance[gemma3",  # 30
    "tests/test_train.py::test_bf16_compute_keeps_float32_master_weights",  # 30
    "tests/test_train.py::test_accumulating_microbatches_equals_one_big_batch",  # 25
    "tests/test_sampler.py::test_sampled_batch_is_independent_of_padding_and_batch_size",  # 29
    "tests/test_faults_train.py::test_kill_9_during_a_background_save_while_training",  # 29
    # Measured alone on 2 cores (2026-12-03), to bring the default suite under 15 minutes:
    "tests/test_bad_input.py::test_manifest_provenance",  # reads the 2-process pair's run: 253
    "tests/test_bad_input.py::test_one_process_per_run_dir_and_kill_9_frees_it",  # 32
    "tests/test_train.py::test_remat_and_scan_change_nothing_beyond_float_tolerance[llama",  # 22
    "tests/test_train.py::test_sharded_run_equals_single_device[mesh1]",  # 22
    "tests/test_train.py::test_a_bf16_loaded_model_learns_at_lr_1e_6_as_float32_training",  # 22
    # Gemma 3 270M through transformers' GGUF loader (it dequantizes the 262k-token vocabulary
    # in numpy): about 40 s and 3.5 GB each time, the suite's memory peak otherwise.
    "tests/test_gguf_io.py::test_gemma3_config",
    "tests/test_pretrained.py::test_chat_prompt_ids_equal_transformers[gemma3-270m]",
    "tests/test_pretrained.py::test_logits_equal_transformers[gemma3-270m]",
    "tests/test_pretrained.py::test_greedy_tokens_equal_transformers[gemma3-270m]",
    "tests/test_tokenizer.py::test_gemma3_encode_equals_transformers",  # 33 (loads it)
    # Measured in a fresh-clone CI (2026-12-03), still over 15 minutes without these:
    "tests/test_models.py::test_preset_param_count_matches_transformers[gemma3-27b]",  # 19
    "tests/test_models.py::test_preset_param_count_matches_transformers[gemma3-12b]",  # 11
    "tests/test_bad_input.py::test_max_len_shorter_than_a_prompt",  # 18
    "tests/test_checkpoint.py::test_restore_on_other_mesh_is_bit_exact[target0-llama]",  # 18
    "tests/test_engine.py::test_cache_grows_through_length_buckets",  # 18
    "tests/test_sampler.py::test_smollm2_greedy_equals_transformers",  # 16
    "tests/test_cli.py::test_info_counts_a_preset_without_weights",  # 15
    "tests/test_sampler.py::test_logprobs_match_full_forward",  # 13
    "tests/test_train.py::test_gathered_loss_equals_the_full_logits_loss[gemma3]",  # 13
    "tests/test_sampler.py::test_no_recompilation_within_a_bucket",  # 12
    # Measured in the default suite (2026-12-03, 18 min 0 s beside other work), for 15 minutes;
    # each has a faster sibling left in the default suite (named after it):
    "tests/test_tokenizer.py::test_gemma3_specials_and_no_template",  # 39 (loads the GGUF)
    "tests/test_gguf_io.py::test_tensors_equal_transformers[smollm2]",  # 23; pretrained logits
    "tests/test_train.py::test_sharded_run_equals_single_device[mesh0]",  # 22; sharded loss
    "tests/test_checkpoint.py::test_restore_on_other_mesh_is_bit_exact[target0-gemma3]",  # 21
    "tests/test_pretrained.py::test_greedy_tokens_equal_transformers[smollm2]",  # 18; logits
    "tests/test_models.py::test_preset_param_count_matches_published[llama3.1-70b]",  # 16
    "tests/test_hf_parity.py::test_left_padding_matches_unpadded[gemma2]",  # 11; llama's
    "tests/test_gcs.py::test_a_two_process_run_on_gs",  # 2-process run on gs://, killed twice
    "tests/test_gcs.py::test_the_gs_lease",  # waits out two lease periods: 12
)


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


def _free_compiled_programs():
    """After each test module: drop JAX's in-memory compiled programs and traces (the
    persistent cache keeps them on disk), so the suite's memory does not grow module by module."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None or nextitem.module is not item.module:
        _free_compiled_programs()
