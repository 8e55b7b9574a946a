"""LoRA adapters as models of their own: config errors, listings, requests routed to the base's backend with
the adapter (checked against Hugging Face + peft), keys, routes, metrics, Modelfile ADAPTER and the admin API
on a real server, on the paged engine and on llama.cpp (GGUF adapters)."""

from __future__ import annotations

import httpx
import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import model_entry, start_server

MASTER = "sk-lora-master"
PROMPT = "Once upon a time"
STEPS = 12


# ---- config ------------------------------------------------------------------------------------------------


def _parse(models: list[dict]) -> None:
    parse_config({"profiles": {"prod": {"models": models}}}, "lora.yaml")


BASE = {"name": "base", "backend": "paged", "path": "/models/base"}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [{**BASE, "adapters": [{"name": "base", "path": "/a"}]}],
            "lora.yaml: profiles.prod: adapter name 'base' of model 'base' is already used (by base)",
        ),
        (
            [{**BASE, "adapters": [{"name": "sql", "path": "/a"}]}, {**BASE, "name": "sql"}],
            "adapter name 'sql' of model 'base' is already used (by sql)",
        ),
        (
            [{**BASE, "aliases": ["default"], "adapters": [{"name": "default", "path": "/a"}]}],
            "adapter name 'default' of model 'base' is already used (by base)",
        ),
        (
            [{**BASE, "adapters": [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b"}]}],
            "adapter name 'a' of model 'base' is already used (by an adapter of base)",
        ),
        (
            [{**BASE, "adapters": [{"name": "a", "path": "/a", "rank": 8}]}],
            "lora.yaml: profiles.prod.models[0].adapters[0].rank: unknown key",
        ),
        (
            [{**BASE, "adapters": [{"name": "a", "path": "/a", "scale": -1}]}],
            "profiles.prod.models[0].adapters[0].scale: Input should be greater than or equal to 0",
        ),
        (
            [{**BASE, "adapters": [{"name": "sql-*", "path": "/a"}]}],
            "profiles.prod.models[0].adapters[0].name: 'sql-*' is not a valid adapter name",
        ),
        (
            [{**BASE, "adapters": [{"path": "/a"}]}],
            "profiles.prod.models[0].adapters[0].name: Field required",
        ),
        (
            [
                {
                    "name": "up",
                    "backend": "remote",
                    "remote": {"api_base": "http://x/v1"},
                    "adapters": [{"name": "a", "path": "/a"}],
                }
            ],
            "profiles.prod.models[0]: `adapters` (LoRA) need backend 'paged' or 'llamacpp', "
            "not backend 'remote'",
        ),
    ],
)
def test_config_errors(models, message):
    with pytest.raises(ConfigError) as caught:
        _parse(models)
    assert message in str(caught.value)


def test_routes_and_fallbacks_may_name_adapters():
    _parse(
        [
            {**BASE, "adapters": [{"name": "sql", "path": "/a"}]},
            {"name": "route", "deployments": [{"model": "sql"}, {"model": "base"}], "fallbacks": ["sql"]},
        ]
    )


# ---- a served paged model with adapters --------------------------------------------------------------------


@pytest.fixture(scope="module")
def loras(tiny_llama, tmp_path_factory):
    """Three adapters of the tiny llama (PEFT + GGUF of the same numbers), and one for a wider model."""
    from backends.tiny_model.lora import make_tiny_lora

    root = tmp_path_factory.mktemp("loras")
    made = {
        name: make_tiny_lora(
            root / name,
            rank=rank,
            alpha=2.0 * rank,
            targets=targets,
            seed=seed,
            base_model=str(tiny_llama.hf_dir),
        )
        for name, rank, targets, seed in [
            ("sql", 8, ("q_proj", "k_proj", "v_proj", "o_proj"), 1),
            ("support", 4, ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"), 2),
            ("extra", 4, ("o_proj", "down_proj"), 3),
        ]
    }
    return made


@pytest.fixture(scope="module")
def served(tiny_llama, loras, tmp_path_factory):
    adapters = [
        {"name": "sql", "path": str(loras["sql"].peft_dir)},
        {"name": "support", "path": str(loras["support"].peft_dir), "scale": 1.0},
    ]
    models = [
        model_entry(tiny_llama, "prod", adapters=adapters, preload=True),
        {"name": "sql-route", "deployments": [{"model": "sql"}]},
    ]
    config = {"profile": "prod", "profiles": {"prod": {"models": models}}}
    server = start_server(config, tmp_path_factory.mktemp("lora-server"), env={"TANDEM_MASTER_KEY": MASTER})
    yield server
    server.stop()


def _master(server) -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER}"}


def _complete(server, model: str, key: str = MASTER, prompt: str = PROMPT) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": STEPS, "temperature": 0, "ignore_eos": True}
    return httpx.post(
        f"{server.v1}/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60
    )


def _hf_peft_text(hf_dir, peft_dir, prompt: str, steps: int) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    if peft_dir is not None:
        model = PeftModel.from_pretrained(model, str(peft_dir))
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.eval().generate(
            ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0
        )
    return tokenizer.decode(out[0, ids.shape[1] :])


def test_each_adapter_is_listed_with_its_base(served):
    cards = httpx.get(f"{served.v1}/models", headers=_master(served), timeout=10).json()["data"]
    by_id = {c["id"]: c for c in cards}
    assert by_id["sql"]["parent"] == "tiny" and by_id["sql"]["root"] == "tiny"
    assert by_id["support"]["parent"] == "tiny" and by_id["sql"]["backend"] == "paged"
    assert by_id["tiny"]["parent"] is None and by_id["tiny"]["root"] == "tiny"
    assert by_id["sql"]["context_length"] == by_id["tiny"]["context_length"]
    one = httpx.get(f"{served.v1}/models/sql", headers=_master(served), timeout=10).json()
    assert one["parent"] == "tiny"
    tags = httpx.get(f"{served.base_url}/api/tags", headers=_master(served), timeout=10).json()["models"]
    details = {t["name"]: t["details"] for t in tags}
    assert details["sql:latest"]["parent_model"] == "tiny:latest"
    assert details["tiny:latest"]["parent_model"] == ""
    show = httpx.post(
        f"{served.base_url}/api/show", json={"model": "support"}, headers=_master(served), timeout=10
    )
    assert show.status_code == 200
    assert "FROM tiny\n" in show.json()["modelfile"]
    assert f"ADAPTER {served_adapter_path(served, 'support')}" in show.json()["modelfile"]


def served_adapter_path(server, name: str) -> str:
    listed = httpx.get(f"{server.base_url}/admin/models/tiny/adapters", headers=_master(server), timeout=10)
    return next(a["path"] for a in listed.json()["data"] if a["name"] == name)


def test_requests_naming_an_adapter_run_it_and_match_hf_peft(served, tiny_llama, loras):
    base = _complete(served, "tiny").json()["choices"][0]["text"]
    sql = _complete(served, "sql")
    assert sql.status_code == 200, sql.text
    assert sql.json()["model"] == "sql"
    assert sql.headers["x-tandem-backend"] == "paged"
    text = sql.json()["choices"][0]["text"]
    assert text != base  # the adapter changed the answer: the request did not run on the base alone
    assert text == _hf_peft_text(tiny_llama.hf_dir, loras["sql"].peft_dir, PROMPT, STEPS)
    assert base == _hf_peft_text(tiny_llama.hf_dir, None, PROMPT, STEPS)
    routed = _complete(served, "sql-route")
    assert routed.json()["choices"][0]["text"] == text and routed.headers["x-tandem-deployment"] == "sql"
    # Ollama's API and chat go through the same path
    chat = httpx.post(
        f"{served.base_url}/api/generate",
        headers=_master(served),
        timeout=60,
        json={
            "model": "support",
            "prompt": PROMPT,
            "raw": True,
            "stream": False,
            "options": {"temperature": 0, "num_predict": STEPS},
        },
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["response"] != base


def test_keys_limits_and_metrics_see_the_adapter_as_a_model(served):
    created = httpx.post(
        f"{served.base_url}/admin/keys",
        headers=_master(served),
        timeout=10,
        json={"name": "sql-only", "models": ["sql"]},
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert _complete(served, "sql", key=key).status_code == 200
    refused = _complete(served, "tiny", key=key)
    assert refused.status_code == 404 and "sql" in refused.json()["error"]["message"]
    listed = httpx.get(f"{served.v1}/models", headers={"authorization": f"Bearer {key}"}, timeout=10).json()
    assert [c["id"] for c in listed["data"]] == ["sql"]
    usage = httpx.get(f"{served.base_url}/admin/usage", headers=_master(served), timeout=10)
    assert usage.status_code == 200 and "sql" in usage.text
    metrics = httpx.get(f"{served.base_url}/metrics", headers=_master(served), timeout=10).text
    assert 'model="sql"' in metrics


def test_embeddings_are_refused_for_an_adapter(served):
    response = httpx.post(
        f"{served.v1}/embeddings", json={"model": "sql", "input": "hi"}, headers=_master(served), timeout=30
    )
    assert response.status_code == 400, response.text
    assert "sql" in response.json()["error"]["message"]


def test_admin_adds_and_removes_an_adapter_without_reloading_the_base(served, loras):
    url = f"{served.base_url}/admin/models/tiny/adapters"
    body = {"name": "extra", "path": str(loras["extra"].peft_dir), "scale": 0.5}
    assert httpx.post(url, json=body, timeout=30).status_code == 401  # master key only
    added = httpx.post(url, json=body, headers=_master(served), timeout=60)
    assert added.status_code == 201, added.text
    assert added.json() == {
        "name": "extra",
        "base": "tiny",
        "path": body["path"],
        "scale": 0.5,
        "source": "created",
        "loaded": True,
    }
    again = httpx.post(url, json={**body, "name": "sql"}, headers=_master(served), timeout=60)
    assert again.status_code == 400 and "config file" in again.json()["error"]["message"]
    assert _complete(served, "extra").status_code == 200
    listed = httpx.get(url, headers=_master(served), timeout=10).json()["data"]
    assert {a["name"]: a["source"] for a in listed} == {
        "sql": "config",
        "support": "config",
        "extra": "created",
    }
    assert served.log().count("loading model 'tiny'") == 1  # the base was loaded once, at start
    configured = httpx.delete(f"{url}/sql", headers=_master(served), timeout=30)
    assert configured.status_code == 400 and "config file" in configured.json()["error"]["message"]
    removed = httpx.delete(f"{url}/extra", headers=_master(served), timeout=30)
    assert removed.status_code == 200, removed.text
    gone = _complete(served, "extra")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert httpx.delete(f"{url}/extra", headers=_master(served), timeout=30).status_code == 404


def test_a_bad_adapter_is_refused_at_load_naming_the_problem(served, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from backends.tiny_model.lora import make_tiny_lora

    url = f"{served.base_url}/admin/models/tiny/adapters"
    wrong = make_tiny_lora(tmp_path / "wide", rank=4, seed=9)
    tensors = load_file(str(wrong.peft_dir / "adapter_model.safetensors"))
    for name in list(tensors):
        if name.endswith("q_proj.lora_A.weight"):
            tensors[name] = np.zeros((4, 128), np.float32)  # the base's q_proj takes 64 inputs
    save_file(tensors, str(wrong.peft_dir / "adapter_model.safetensors"))
    for body, expected in [
        ({"name": "wide", "path": str(wrong.peft_dir)}, "q_proj"),
        ({"name": "nothing", "path": str(tmp_path / "missing")}, "no such file or directory"),
        ({"name": "gguf", "path": str(wrong.gguf_path)}, "PEFT directory"),
    ]:
        response = httpx.post(url, json=body, headers=_master(served), timeout=60)
        assert response.status_code == 400, response.text
        assert expected in response.json()["error"]["message"]
    assert "wide" not in [
        c["id"] for c in httpx.get(f"{served.v1}/models", headers=_master(served)).json()["data"]
    ]


def test_modelfile_adapter_creates_a_persisted_adapter_model(served, loras):
    import ollama

    client = ollama.Client(host=served.base_url, headers=_master(served))
    path = loras["extra"].peft_dir
    created = httpx.post(
        f"{served.base_url}/api/create",
        headers=_master(served),
        timeout=60,
        json={"model": "storyteller", "modelfile": f"FROM tiny\nADAPTER {path}\n", "stream": False},
    )
    assert created.status_code == 200, created.text
    cards = {c["id"]: c for c in httpx.get(f"{served.v1}/models", headers=_master(served)).json()["data"]}
    assert cards["storyteller"]["parent"] == "tiny"
    assert _complete(served, "storyteller").status_code == 200
    records = list((served.log_path.parent / "home").rglob("adapters/*.json"))
    assert any("storyteller" in r.read_text() for r in records)
    for modelfile, expected in [
        (f"FROM tiny\nADAPTER {path}\nADAPTER {path}\n", "one ADAPTER per model"),
        (f"FROM tiny\nSYSTEM hi\nADAPTER {path}\n", "SYSTEM is not supported"),
        (f"FROM /no/such.gguf\nADAPTER {path}\n", "FROM must name a model"),
        (f"FROM storyteller\nADAPTER {path}\n", "adapters do not stack"),
    ]:
        refused = httpx.post(
            f"{served.base_url}/api/create",
            headers=_master(served),
            timeout=30,
            json={"model": "broken", "modelfile": modelfile, "stream": False},
        )
        assert refused.status_code == 400 and expected in refused.json()["error"], refused.text
    client.delete("storyteller")
    assert not any(
        "storyteller" in r.read_text() for r in (served.log_path.parent / "home").rglob("adapters/*.json")
    )


# ---- the llama.cpp backend with GGUF adapters --------------------------------------------------------------


@pytest.fixture(scope="module")
def served_dev(tiny_llama, loras, tmp_path_factory):
    """The dev profile with two GGUF adapters; 1 llama.cpp thread, with which a greedy sequence's tokens do
    not depend on what shares its batch."""
    adapters = [
        {"name": "sql", "path": str(loras["sql"].gguf_path)},
        {"name": "support", "path": str(loras["support"].gguf_path)},
    ]
    entry = model_entry(tiny_llama, "dev", adapters=adapters, preload=True)
    config = {"profile": "dev", "profiles": {"dev": {"models": [entry]}}}
    server = start_server(config, tmp_path_factory.mktemp("lora-dev"), env={"TANDEM_LLAMACPP_THREADS": "1"})
    yield server
    server.stop()


def test_llamacpp_serves_gguf_adapters_matching_hf_peft(served_dev, tiny_llama, loras):
    base = _complete(served_dev, "tiny").json()["choices"][0]["text"]
    sql = _complete(served_dev, "sql")
    assert sql.status_code == 200, sql.text
    assert sql.json()["model"] == "sql" and sql.headers["x-tandem-backend"] == "llamacpp"
    text = sql.json()["choices"][0]["text"]
    assert text != base  # served with the adapter, not by the base alone
    assert text == _hf_peft_text(tiny_llama.hf_dir, loras["sql"].peft_dir, PROMPT, STEPS)


def test_llamacpp_mixed_concurrent_requests_each_equal_their_run_alone(served_dev):
    from concurrent.futures import ThreadPoolExecutor

    models = ["tiny", "sql", "support"] * 2
    prompts = [f"{PROMPT} {i}" for i in range(len(models))]

    def text(model: str, prompt: str) -> str:
        response = _complete(served_dev, model, prompt=prompt)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    alone = [text(m, p) for m, p in zip(models, prompts, strict=True)]
    assert len(set(alone[:3])) == 3  # base and the two adapters all answer differently
    with ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(text, models, prompts))
    assert together == alone


def test_a_config_adapter_in_the_wrong_format_fails_the_start(tiny_llama, loras, tmp_path):
    entry = model_entry(tiny_llama, "dev", adapters=[{"name": "sql", "path": str(loras["sql"].peft_dir)}])
    with pytest.raises(RuntimeError) as caught:
        start_server({"profile": "dev", "profiles": {"dev": {"models": [entry]}}}, tmp_path)
    assert "profiles.dev.models[0].adapters[0].path: backend 'llamacpp' reads a GGUF LoRA file" in str(
        caught.value
    )


def test_created_adapters_come_back_after_a_restart(tiny_llama, loras, tmp_path, caplog):
    """What /api/create and the admin API persist is served again by the next start (build_manager)."""
    from gateway.adapter_models import AdapterModel
    from gateway.adapter_store import AdapterRecord, AdapterStore
    from gateway.config import AdapterSpec, Profile
    from gateway.model_store import ModelStore
    from gateway.settings import Settings
    from gateway.startup import build_manager

    store = ModelStore(tmp_path / "created")
    adapters = AdapterStore(store)
    for name, base in [("kept", "tiny"), ("orphan", "gone")]:
        record = AdapterRecord(base=base, adapter=AdapterSpec(name=name, path=str(loras["extra"].peft_dir)))
        adapters.prepare(record).commit()
    profile = Profile.model_validate({"models": [model_entry(tiny_llama, "prod")]})
    manager = build_manager(profile, "prod", Settings(home=tmp_path), "test.yaml", store)
    kept = manager.resolve("kept")
    assert isinstance(kept, AdapterModel) and kept.user_created and kept.parent is manager.resolve("tiny")
    assert manager.resolve("orphan") is None
    assert "created adapter 'orphan' cannot be served: its base model 'gone' is gone" in caplog.text
    assert adapters.delete("kept") and not adapters.delete("kept")
