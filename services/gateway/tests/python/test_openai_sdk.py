"""The gateway through the official `openai` Python package, against a running
pipeline (router, workers, vLLM simulators). Run by tests/pipeline.rs, which
starts all of it and passes the gateway's URL in TRIAGE_TEST_GATEWAY_URL (e.g.
http://127.0.0.1:PORT/v1); the alias `gpt-4o-mini` → triage-tier1 is
configured there.

Every call has a timeout and no retries, so a failure shows at once.
"""

import json
import os
import unittest

import openai

BASE_URL = os.environ["TRIAGE_TEST_GATEWAY_URL"]
CLIENT = openai.OpenAI(base_url=BASE_URL, api_key="not-checked-yet", max_retries=0, timeout=60)
HELLO = [{"role": "user", "content": "Say hello."}]


class OpenAISdkAgainstTheGateway(unittest.TestCase):
    def test_models_lists_the_three_models_and_the_alias(self):
        ids = [m.id for m in CLIENT.models.list()]
        self.assertEqual(ids[:3], ["triage-auto", "triage-tier1", "triage-tier2"])
        self.assertIn("gpt-4o-mini", ids)
        self.assertEqual(CLIENT.models.retrieve("triage-tier2").id, "triage-tier2")

    def test_chat_not_streamed(self):
        raw = CLIENT.chat.completions.with_raw_response.create(
            model="triage-auto", messages=HELLO, max_tokens=8, temperature=0.2, top_p=0.9
        )
        self.assertIn(raw.headers["x-triage-tier"], ("1", "2"))
        self.assertTrue(raw.headers["x-triage-request-id"])
        self.assertNotIn("x-triage-ignored-params", raw.headers, "top_p is forwarded")
        r = raw.parse()
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.model, "triage-auto")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_chat_streamed_with_usage(self):
        chunks = list(
            CLIENT.chat.completions.create(
                model="triage-auto",
                messages=HELLO,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertTrue(text)
        finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(len(finish), 1)
        self.assertIn(finish[0].model_extra["triage"]["tier"], (1, 2))
        usage = chunks[-1]
        self.assertEqual(usage.choices, [])
        self.assertGreater(usage.usage.completion_tokens, 0)
        self.assertEqual(len({c.id for c in chunks}), 1)

    def test_a_forced_tier_and_an_alias(self):
        for model, tier in (("triage-tier2", "2"), ("gpt-4o-mini", "1")):
            raw = CLIENT.chat.completions.with_raw_response.create(model=model, messages=HELLO, max_tokens=4)
            self.assertEqual(raw.headers["x-triage-tier"], tier, model)
            self.assertEqual(raw.parse().model_extra["triage"]["tier"], int(tier))

    def test_completions_whole_and_streamed(self):
        r = CLIENT.completions.create(model="triage-tier1", prompt="Say hi", max_tokens=8)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.choices[0].text)
        streamed = list(CLIENT.completions.create(model="triage-tier1", prompt="Say hi", max_tokens=8, stream=True))
        self.assertTrue("".join(c.choices[0].text for c in streamed if c.choices))
        self.assertIn(streamed[-1].choices[0].finish_reason, ("stop", "length"))

    def test_stop_seed_and_response_format_reach_the_model(self):
        # temperature 0: the simulator answers a prompt the same way each time.
        def ask(**extra):
            r = CLIENT.chat.completions.create(
                model="triage-tier2", messages=HELLO, max_tokens=12, temperature=0, seed=7, **extra
            )
            return r.choices[0]

        whole = ask().message.content
        words = whole.split()
        self.assertGreater(len(words), 3, whole)
        cut = ask(stop=[" " + words[2]])
        self.assertEqual(cut.finish_reason, "stop")
        self.assertEqual(cut.message.content, whole[: whole.index(" " + words[2])])

        answer = ask(response_format={"type": "json_object"}).message.content
        self.assertIsInstance(json.loads(answer), dict, answer)
        with self.assertRaises(openai.BadRequestError) as caught:
            ask(response_format={"type": "yaml"})
        self.assertEqual(caught.exception.param, "response_format.type")

    def test_logprobs_of_a_whole_answer(self):
        r = CLIENT.chat.completions.create(
            model="triage-tier2", messages=HELLO, max_tokens=4, logprobs=True, top_logprobs=2
        )
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 2)

    def test_logprobs_of_a_stream(self):
        chunks = list(
            CLIENT.chat.completions.create(
                model="triage-tier2", messages=HELLO, max_tokens=5, stream=True,
                logprobs=True, top_logprobs=1, stream_options={"include_usage": True},
            )
        )
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].delta.content]
        tokens = [t for d in deltas for t in (d.logprobs.content if d.logprobs else [])]
        self.assertEqual(len(tokens), chunks[-1].usage.completion_tokens)
        self.assertEqual("".join(t.token for t in tokens), "".join(d.delta.content for d in deltas))
        self.assertTrue(all(len(t.top_logprobs) == 1 for t in tokens))

    def test_n_choices_of_a_whole_answer(self):
        r = CLIENT.chat.completions.create(model="triage-tier2", messages=HELLO, max_tokens=6, n=3)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        for c in r.choices:
            self.assertTrue(c.message.content)
            self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertGreater(len({c.message.content for c in r.choices}), 1, "sampled apart")
        self.assertGreaterEqual(r.usage.completion_tokens, 3, "usage counts every choice")

    def test_an_unknown_model_is_not_found(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            CLIENT.chat.completions.create(model="gpt-5", messages=HELLO)
        self.assertEqual(caught.exception.status_code, 404)
        self.assertEqual(caught.exception.code, "model_not_found")

    def test_bad_requests_name_the_field(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            CLIENT.chat.completions.create(model="triage-auto", messages=[])
        self.assertEqual(caught.exception.param, "messages")
        with self.assertRaises(openai.BadRequestError) as caught:
            CLIENT.chat.completions.create(model="triage-auto", messages=HELLO, n=2, stream=True)
        self.assertEqual(caught.exception.param, "n")
        # Rejected by the router (no prompt text), mapped to 400 as well.
        with self.assertRaises(openai.BadRequestError) as caught:
            CLIENT.chat.completions.create(model="triage-auto", messages=[{"role": "user", "content": "  "}])
        self.assertEqual(caught.exception.code, "empty_prompt")


if __name__ == "__main__":
    unittest.main(verbosity=2)
