"""Korean and English side by side: each member reads the bot in their Discord language, and what the bot
posts for the whole channel is in the server's language. Real discord.py client against the fake Discord."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bot.generation.catalog import OPTION_NAMES, Catalog
from bot.i18n import catalogs
from bot.store.records import EntryKind
from tests.e2e.harness import WAIT, World, status_line, visible
from tests.e2e.test_admin import deliver, says
from tests.e2e.test_operator import start_with_operator
from tests.fakes.fake_discord import CallbackType
from tests.fakes.fake_gateway import Reply

ASYNC_MODEL, SYNC_MODEL = "xai/grok-imagine-image", "gemini-2.5-flash-image"
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def _names() -> set[str]:
    """Words that stay as they are in every language: model and provider names, option names and values."""
    catalog = Catalog.load()
    words: set[str] = {"count", *OPTION_NAMES}
    for spec in catalog.models:
        words |= set(re.findall(r"[A-Za-z]+", f"{spec.name} {spec.provider}"))
        for option in OPTION_NAMES:
            for value in spec.choices(option, catalog.aspect_ratios) or []:
                words |= set(re.findall(r"[A-Za-z]+", value))
    return words


NAMES = _names()


def english_words(piece: str, prompt: str = "") -> list[str]:
    """Latin words left in a piece of text once names, code spans, mentions and timestamps are taken out."""
    stripped = re.sub(r"`[^`]*`|<[@#&!t:][^>]*>", " ", piece.replace(prompt, " ") if prompt else piece)
    return [word for word in re.findall(r"[A-Za-z_]{2,}", stripped) if word not in NAMES]


def assert_korean(shown: Any, prompt: str = "") -> None:
    pieces = visible(shown)
    assert pieces, "something is shown"
    assert any(HANGUL.search(piece) for piece in pieces), pieces
    leftovers = {piece: english_words(piece, prompt) for piece in pieces}
    assert {piece: words for piece, words in leftovers.items() if words} == {}


def assert_english(shown: Any, prompt: str = "") -> None:
    pieces = [piece.replace(prompt, "") if prompt else piece for piece in visible(shown)]
    assert pieces and not [piece for piece in pieces if HANGUL.search(piece)], pieces


async def test_korean_and_english_members_side_by_side_through_a_whole_job(running: World) -> None:
    fd, gw = running.fd, running.gw
    gw.configure(ASYNC_MODEL, completion_delay=0.6)
    korean_prompt, english_prompt = "비 오는 서울의 밤거리", "a rainy street at night"
    ko = await running.imagine(korean_prompt, user=fd.bob, locale="ko", model=ASYNC_MODEL)
    en = await running.imagine(english_prompt, user=fd.alice, locale="en-US", model=ASYNC_MODEL)
    ko_done, en_done = await asyncio.gather(running.finished(ko), running.finished(en))

    for revision in ko.edits:  # progress (queued, generating, downloading) and the result, buttons included
        assert_korean(revision, korean_prompt)
    for revision in en.edits:
        assert_english(revision)
    assert any(status_line(edit).startswith("생성 중…") for edit in ko.edits)
    assert status_line(ko_done) == "완료 · 20 크레딧 차감 · 480 남음"
    assert status_line(en_done) == "Done · Charged 20 credits · 480 left"
    labels = [c.get("label") for row in ko_done.components for c in row.get("components", [])]
    assert labels == ["다시 생성", "리믹스", "자세히", "삭제"]


async def test_korean_sync_job_failure_and_refusal(running: World) -> None:
    fd, gw = running.fd, running.gw
    done = await running.imagine("고양이", user=fd.bob, locale="ko", model=SYNC_MODEL)
    message = await running.finished(done)
    assert len(message.attachments) == 1
    for revision in done.edits:
        assert_korean(revision, "고양이")

    gw.enqueue(Reply.rate_limited(30), method="POST")
    failed = await running.imagine("강아지", user=fd.bob, locale="ko", model=SYNC_MODEL)
    line = status_line(await running.finished(failed))
    assert line == "실패 · 지금 이미지 서비스가 붐비고 있어요. 잠시 후에 다시 해 보세요. 크레딧은 환불됐어요."
    assert_korean(failed.edits[-1], "강아지")
    job = await running.job_of(failed)
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}

    refused = await running.imagine("고양이", user=fd.bob, locale="ko", model=SYNC_MODEL, count=5)
    callback = await refused.wait_for_callback(WAIT)
    assert callback.ephemeral and callback.type == CallbackType.CHANNEL_MESSAGE
    assert callback.data["content"] == f"`{SYNC_MODEL}`은(는) 한 번에 이미지를 1~4장 만들어요. 요청하신 수는 5장이에요."
    english = await running.imagine("a cat", user=fd.alice, locale="en-US", model=SYNC_MODEL, count=5)
    assert "makes 1 to 4 images per request" in (await english.wait_for_callback(WAIT)).data["content"]


async def test_every_gateway_failure_class_reads_in_korean(running: World) -> None:
    failures = [
        Reply.error(401, "authentication_error - invalid key"),
        Reply.error(402, "insufficient credits"),
        Reply.error(403, "model not enabled"),
        Reply.error(404, "unknown model"),
        Reply.error(500, "boom"),
        Reply.error(503, "upstream unavailable"),
        Reply.malformed_json(),
        Reply.json({"id": "img-1", "created": 1}),
        Reply.content_policy(),
    ]
    for reply in failures:
        running.gw.enqueue(reply, method="POST")
        fi = await running.imagine("등대", user=running.fd.bob, locale="ko", model=SYNC_MODEL)
        await running.finished(fi)
        assert_korean(fi.edits[-1], "등대")
        assert status_line(fi.edits[-1]).endswith("크레딧은 환불됐어요.")

    # A 400 quotes the provider's own reason (its words, not ours) inside the Korean sentence.
    reason = "prompt contains unsupported characters"
    running.gw.enqueue(Reply.error(400, reason), method="POST")
    fi = await running.imagine("등대", user=running.fd.bob, locale="ko", model=SYNC_MODEL)
    await running.finished(fi)
    assert status_line(fi.edits[-1]) == f"실패 · 이미지 서비스가 요청을 거절했어요: {reason}. 크레딧은 환불됐어요."


async def test_korean_credits_and_models_list(running: World) -> None:
    done = await running.imagine("연", user=running.fd.bob, locale="ko", model="gpt-image-1-mini")
    await running.finished(done)
    credits = await running.command("credits", user=running.fd.bob, locale="ko")
    assert credits.callback is not None and credits.callback.ephemeral
    assert_korean(credits.callback.data)
    fields = {f["name"]: f["value"] for f in credits.callback.data["embeds"][0]["fields"]}  # type: ignore[index]
    assert fields["사용 가능"] == "492" and fields["진행 중인 작업에 묶인 크레딧"] == "0"
    assert fields["한도"] == "월 500 크레딧"
    assert re.fullmatch(r"<t:\d+:f> \(<t:\d+:R>\)", fields["초기화"])
    assert re.search(r"<t:\d+:R> · `gpt-image-1-mini` · 이미지 1장 · 완료 · 8 크레딧", fields["최근 작업"])

    models = await running.command("models list", user=running.fd.bob, locale="ko")
    assert_korean(models.callback.data)  # type: ignore[union-attr]
    description = models.callback.data["embeds"][0]["description"]  # type: ignore[union-attr]
    assert "`stability-ai/sdxl` · Stability AI (Replicate) · 이미지당 5 크레딧 · 대기열 · 옵션: 없음" in description
    english = await running.command("models list", user=running.fd.alice, locale="en-GB")
    assert_english(english.callback.data)  # type: ignore[union-attr]


async def test_korean_quote_confirm_and_cancel(world: World) -> None:
    await world.start(quote_threshold=50)
    fd = world.fd
    quote_fi = await world.imagine("여우 두 마리", user=fd.bob, locale="ko", model=SYNC_MODEL, count=2)
    quote = await quote_fi.wait_for_callback(WAIT)
    assert_korean(quote.data)
    assert quote.data["content"] == (  # type: ignore[index]
        f"**78 크레딧**이 들어요(`{SYNC_MODEL}` 39 × 2). 생성 후 남는 크레딧: 422. 진행할까요?"
    )
    cancel_id = quote.data["components"][0]["components"][1]["custom_id"]  # type: ignore[index]
    cancelled = await fd.click_button(quote_fi.message, cancel_id, user=fd.bob, locale="ko")
    assert (await cancelled.wait_for_callback(WAIT)).data["content"] == "취소했어요. 크레딧은 차감되지 않았어요."

    again = await world.imagine("여우 두 마리", user=fd.bob, locale="ko", model=SYNC_MODEL, count=2)
    quote = await again.wait_for_callback(WAIT)
    confirm_id = quote.data["components"][0]["components"][0]["custom_id"]  # type: ignore[index]
    click = await fd.click_button(again.message, confirm_id, user=fd.bob, locale="ko")
    assert (await click.wait_for_callback(WAIT)).data["content"] == "확인했어요."
    reply = await click.wait_for_followup(lambda m: not m.ephemeral, WAIT)
    await fd.wait_for(lambda: len(reply.attachments) == 2, WAIT, what="images delivered")
    for revision in reply.history:
        assert_korean(revision, "여우 두 마리")


async def test_korean_cancel_of_a_running_job(running: World) -> None:
    running.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await running.imagine("느린 강물", user=running.fd.bob, locale="ko", model=ASYNC_MODEL)
    message = await fi.wait_for_message_state(lambda m: status_line(m).startswith("생성 중"), WAIT)
    assert_korean(message, "느린 강물")
    cancel_id = next(cid for cid in message.custom_ids if cid.startswith("imagine:cancel:"))
    by_alice = await running.fd.click_button(message, cancel_id, user=running.fd.alice, locale="en-US")
    assert "Only the member who asked" in (await by_alice.wait_for_callback(WAIT)).data["content"]
    click = await running.fd.click_button(message, cancel_id, user=running.fd.bob, locale="ko")
    await click.wait_for_callback(WAIT)
    assert status_line(await running.finished(fi)) == "취소됨 · 취소했어요. 크레딧은 환불됐어요."
    assert_korean(fi.edits[-1], "느린 강물")


async def test_commands_are_synced_with_korean_localizations(running: World) -> None:
    synced = {c["name"]: c for c in running.fd.command_syncs[-1].commands}
    imagine = synced["imagine"]
    assert imagine["name_localizations"] == {"ko": "이미지"}
    assert imagine["description_localizations"] == {"ko": "텍스트 프롬프트로 이미지를 생성해요."}
    prompt = next(o for o in imagine["options"] if o["name"] == "prompt")
    assert prompt["description_localizations"] == {"ko": "그릴 내용"}
    quota = next(o for o in synced["quota"]["options"] if o["name"] == "default")
    period = next(o for o in quota["options"] if o["name"] == "period")
    assert {c["value"]: c["name_localizations"]["ko"] for c in period["choices"]}["month"] == "매월"


async def test_a_changed_translation_is_synced_again(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    await world.start()
    await world.stop()
    monkeypatch.setitem(catalogs()["ko"], "command.imagine", "프롬프트로 그림을 그려요.")
    await world.start()
    assert len(world.fd.command_syncs) == 2, "the localizations are part of the command hash"
    synced = {c["name"]: c for c in world.fd.command_syncs[-1].commands}
    assert synced["imagine"]["description_localizations"] == {"ko": "프롬프트로 그림을 그려요."}


async def _expired_channel_result(world: World, prompt: str, locale: str) -> Any:
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    earlier = {r.path for r in world.gw.requests if r.kind == "POLL"}
    fi = await world.imagine(prompt, user=world.fd.alice, locale=locale, model=ASYNC_MODEL)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL" and r.path not in earlier, timeout=WAIT)
    fi.expire()  # fifteen minutes later: the result goes through the channel, for everyone there
    stored = await world.store.get_job(job.id)
    assert stored is not None and stored.operation_id
    world.gw.complete(stored.operation_id)
    message = await world.finished(fi)
    final = message.history[-1]
    assert final.attachments and final.route == "/channels/{channel_id}/messages/{message_id}", final.route
    return final


async def test_a_result_through_the_channel_is_in_the_servers_language(world: World) -> None:
    assert world.fd.guild is not None
    world.fd.guild.preferred_locale = "ko"
    await world.start()
    # An English member's result, posted after their token expired, reads in the server's Korean.
    final = await _expired_channel_result(world, "an old map", "en-US")
    assert_korean(final, "an old map")
    assert status_line(final) == "완료 · 20 크레딧 차감 · 480 남음"

    # An admin sets the server's language to English: the same route now speaks English.
    answer = await world.command("server language", {"language": "en"}, user=world.fd.admin, locale="ko")
    assert answer.callback.data["content"] == (  # type: ignore[union-attr]
        "이제 봇이 이 서버에 따로 올리는 메시지(오래 걸린 결과, 새로 올리는 실패 안내, 로그 채널 알림)는 영어로 나와요."
    )
    final = await _expired_channel_result(world, "지도", "ko")
    assert_english(final, "지도")
    assert status_line(final) == "Done · Charged 20 credits · 460 left"
    assert [c.get("label") for row in final.components for c in row.get("components", [])] == [
        "Re-roll",
        "Remix",
        "Details",
        "Delete",
    ]


async def test_a_korean_job_stays_korean_after_a_restart(world: World) -> None:
    await world.start()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await world.imagine("종이배", user=world.fd.bob, locale="ko", model=ASYNC_MODEL)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    await world.stop()
    store = await world.open_store()
    stored = await store.get_job(job.id)
    await store.close()
    assert stored is not None and stored.locale == "ko" and stored.operation_id
    await world.start()
    world.gw.complete(stored.operation_id)
    message = await world.finished(fi)
    assert status_line(message) == "완료 · 20 크레딧 차감 · 480 남음"
    assert_korean(message, "종이배")


async def test_korean_admin_answers_audit_and_csv_headers(running: World) -> None:
    fd = running.fd
    admin = {"user": fd.admin, "locale": "ko"}
    grant = await running.command("quota grant", {"member": fd.bob, "amount": 1500, "reason": "대회 우승"}, **admin)
    embed = grant.callback.data["embeds"][0]  # type: ignore[union-attr]
    assert embed["description"] == f"<@{fd.bob.id}> 님에게 이번 기간 1,500 크레딧을 지급했어요."
    member_name = embed["title"]
    assert_korean(grant.callback.data, member_name)  # type: ignore[union-attr]
    budget = await running.command("budget set", {"amount": 20000, "period": "week"}, **admin)
    assert budget.callback.data["content"] == "서버 예산: 주 20,000 크레딧."  # type: ignore[union-attr]
    refused = await running.command("budget show", user=fd.bob, locale="ko")
    assert refused.callback.data["content"] == "이 작업을 하려면 서버 관리하기 권한이 필요해요."  # type: ignore[union-attr]

    audit = await running.command("audit", **admin)
    lines = audit.callback.data["content"].splitlines()  # type: ignore[union-attr]
    assert " `policy.update` 서버 설정 변경 · " in lines[0] and " `ledger.grant` 크레딧 지급 · " in lines[1]
    assert '"reason": "대회 우승"' in lines[1]

    fi = await running.command("usage export", {"start": "2020-01-01", "end": "2020-01-31"}, **admin)
    message = await fi.wait_for_message_state(lambda m: not m.loading and m.attachments, WAIT)
    assert message.content == "크레딧 장부: 0건."
    header = message.attachments[0].data.decode("utf-8").splitlines()[0]
    assert header == "번호,시각_UTC,사용자_ID,종류,크레딧,작업_ID,모델,처리자_ID,사유"


async def test_a_failure_posted_anew_is_in_the_servers_language(running: World) -> None:
    fd = running.fd
    answer = await running.command("server language", {"language": "ko"}, user=fd.admin)
    assert answer.callback.data["content"] == (  # type: ignore[union-attr]
        "Messages the bot posts on its own here (results after a long wait, failures posted anew, log-channel notices)"
        " are now in Korean."
    )
    running.gw.configure(ASYNC_MODEL, completion_delay=3600, final_status="failed", failure_message="GPU fell over")
    fi = await running.imagine("a lost kite", user=fd.alice, locale="en-US", model=ASYNC_MODEL)
    job = await running.job_of(fi)
    message = await fi.wait_for_message_state(lambda m: status_line(m).startswith("Generating"), WAIT)
    message.deleted = True  # a moderator deleted the reply: the failure is posted as a new message
    stored = await running.store.get_job(job.id)
    assert stored is not None and stored.operation_id
    running.gw.complete(stored.operation_id)
    assert running.bot is not None
    await asyncio.wait_for(running.bot.services.jobs.join(job.id), WAIT)
    (posted,) = [m for m in fd.channel_messages(job.channel_id) if m.content == f"<@{fd.alice.id}>"]
    assert status_line(posted) == (
        "실패 · 이미지 제공 업체가 이 이미지를 만들지 못했어요: GPU fell over. 크레딧은 환불됐어요."
    )


async def test_a_korean_servers_log_channel_and_alert_channel_read_in_korean(world: World) -> None:
    """What the bot posts on its own in a Korean server (the 80 % budget notice, the forwarded admin changes,
    the operator's alert in its channel there) is Korean, though the admin who set it up has an English client."""
    fd = world.fd
    assert fd.guild is not None and fd.admin is not None
    fd.guild.preferred_locale = "ko"
    log_channel, alert_channel = fd.guild.add_channel("봇-로그"), fd.guild.add_channel("봇-알림")
    await start_with_operator(world, operator_alert_channel_id=alert_channel.id)

    def posted(channel_id: int) -> list[str]:
        return [m.content for m in fd.channel_messages(channel_id)]

    assert await says(world, "server logchannel", {"channel": log_channel}) == (
        f"Budget notices and admin changes now go to <#{log_channel.id}>."
    )
    await says(world, "budget set", {"amount": 48, "period": "month"})

    # Both admin changes are forwarded (after each command) before the job, so the notice comes third.
    await fd.wait_for(lambda: len(posted(log_channel.id)) == 2 or None, WAIT, what="the admin changes")
    await deliver(world, "항구", user=fd.alice, model=SYNC_MODEL)  # 39 of 48 credits: 81 %
    await fd.wait_for(lambda: len(posted(log_channel.id)) == 3 or None, WAIT, what="the budget notice")
    audit_set, audit_budget, budget = posted(log_channel.id)
    assert audit_set.startswith(f"<@{fd.admin.id}> 님의 관리자 변경: 로그 채널 지정(`server.log_channel`) · ")
    assert audit_budget.startswith(f"<@{fd.admin.id}> 님의 관리자 변경: 서버 설정 변경(`policy.update`) · ")
    assert budget == "이 서버가 이번 달 예산의 80%를 썼어요(48 크레딧 중 39 크레딧)."

    world.gw.enqueue(Reply.error(402, "insufficient credits"), method="POST", times=1)
    fi = await world.imagine("등대", user=fd.alice, model="gpt-image-1-mini")
    await world.finished(fi)
    await fd.wait_for(lambda: posted(alert_channel.id) or None, WAIT, what="the operator's alert")
    assert posted(alert_channel.id) == ["⚠️ 이미지 게이트웨이의 크레딧을 다 썼어요(402). 충전할 때까지 작업이 실패해요."]
