"""The shared fixtures themselves work: the tiny model trains and the template renders."""


def test_tiny_model_loads_and_computes_loss(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hello world"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tok("hello world answer")["input_ids"]])
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    # a random model over a ~400 token vocabulary is close to uniform
    assert 4.0 < out.loss.item() < 8.0
