"""A fake Discord for end-to-end tests of the real discord.py client.

``FakeDiscord`` is an aiohttp server on 127.0.0.1 that speaks enough of Discord's REST API (v10) and
gateway for a bot to log in, sync application commands, receive slash commands, autocomplete, button
clicks and modal submits, answer them (callbacks, original-response edits, follow-ups) and send or edit
channel messages. Everything the bot sends is recorded, and the messages it produces are modelled (content,
embeds, attachments with their bytes, components, flags and edit history), so a test can assert on what
Discord received and on what a member would see.

Typical use::

    async with FakeDiscord() as fd, fd.running(bot):
        await bot.tree.sync(guild=discord.Object(fd.guild.id))
        fi = await fd.send_slash_command("imagine", {"prompt": "a cat"}, user=fd.alice)
        assert (await fi.wait_for_callback()).type == CallbackType.DEFERRED_CHANNEL_MESSAGE
        final = await fi.wait_for_edit(lambda m: len(m.attachments) == 2)
        assert final.attachments[0].data.startswith(b"\\x89PNG")

Payload shapes follow the Discord API documentation and what discord.py 2.7 parses (``state.py``,
``interactions.py``, ``message.py``, ``webhook/async_.py``). Deviations worth knowing:

* every JSON response carries ``Content-Type: application/json`` exactly: discord.py's ``json_or_text``
  compares the header verbatim and would treat ``application/json; charset=utf-8`` as text;
* gateway frames are plain JSON text even when the client asks for ``compress=zlib-stream``;
  discord.py accepts text frames;
* rate limits are not simulated unless injected (``rate_limit_next``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import io
import itertools
import json
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import yarl
from aiohttp import web

T = TypeVar("T")

API_VERSION = 10
DISCORD_EPOCH_MS = 1420070400000
MiB = 1024 * 1024
DEFAULT_UPLOAD_LIMIT = 10 * MiB
#: Upload limit per attachment by guild boost tier (Discord, 2025).
PREMIUM_UPLOAD_LIMITS = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}
DEFAULT_TOKEN = "fake-bot-token.XXXXXX.fake"


class Perm:
    """Permission bits the fake computes with (same values as ``discord.Permissions``)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38
    #: Every permission bit Discord defines today (``discord.Permissions.all()``).
    ALL = (1 << 53) - 1
    #: What a fresh guild's @everyone role has, roughly.
    DEFAULT_EVERYONE = (
        CREATE_INSTANT_INVITE
        | ADD_REACTIONS
        | VIEW_CHANNEL
        | SEND_MESSAGES
        | EMBED_LINKS
        | ATTACH_FILES
        | READ_MESSAGE_HISTORY
        | USE_EXTERNAL_EMOJIS
        | CONNECT
        | SPEAK
        | CHANGE_NICKNAME
        | USE_APPLICATION_COMMANDS
        | SEND_MESSAGES_IN_THREADS
    )


class Intent:
    """Gateway intent bits the fake looks at."""

    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class InteractionType:
    """Interaction types (``interaction.type``)."""

    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class CallbackType:
    """Interaction callback types (the ``type`` of ``POST /interactions/{id}/{token}/callback``)."""

    PONG = 1
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9
    LAUNCH_ACTIVITY = 12


class OptionType:
    """Application command option types."""

    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


class MessageFlag:
    """Message flag bits."""

    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


class ErrorCode:
    """JSON error codes the fake answers with."""

    UNKNOWN_CHANNEL = 10003
    UNKNOWN_GUILD = 10004
    UNKNOWN_MEMBER = 10007
    UNKNOWN_MESSAGE = 10008
    UNKNOWN_USER = 10013
    UNKNOWN_WEBHOOK = 10015
    UNKNOWN_INTERACTION = 10062
    REQUEST_TOO_LARGE = 40005
    ALREADY_ACKNOWLEDGED = 40060
    MISSING_ACCESS = 50001
    CANNOT_EDIT_OTHERS_MESSAGE = 50005
    EMPTY_MESSAGE = 50006
    MISSING_PERMISSIONS = 50013
    INVALID_FORM_BODY = 50035
    INVALID_WEBHOOK_TOKEN = 50027


class FakeDiscordTimeout(AssertionError):
    """A ``wait_for...`` call timed out; the message lists what the fake did receive."""


# --------------------------------------------------------------------------------------------------
# Small helpers


class _Snowflakes:
    """Monotonic, unique, time-based snowflakes (so ``created_at`` of ids looks right)."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(now, self._last + 1)
        return self._last


make_snowflake = _Snowflakes()


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # discord.py compares the content type verbatim with "application/json": no charset suffix.
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def _error(status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return _json_response(body, status)


def _form_error(errors: dict[str, Any]) -> web.Response:
    return _error(400, ErrorCode.INVALID_FORM_BODY, "Invalid Form Body", errors)


def _field_error(code: str, message: str) -> dict[str, Any]:
    return {"_errors": [{"code": code, "message": message}]}


def _nest(path: Sequence[str | int], leaf: dict[str, Any]) -> dict[str, Any]:
    for key in reversed(path):
        leaf = {str(key): leaf}
    return leaf


def _id_of(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    if isinstance(obj, str):
        return int(obj)
    return int(obj.id)


def _perm_value(perms: Any) -> int:
    """Accept an int, a ``discord.Permissions`` (anything with ``.value``) or a decimal string."""
    if perms is None:
        return 0
    if isinstance(perms, int):
        return perms
    if isinstance(perms, str):
        return int(perms)
    return int(perms.value)


def sniff_content_type(data: bytes, filename: str) -> str | None:
    """The content type Discord would report for an upload: from the bytes, else from the name."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(filename)
    return guessed


def _image_size(data: bytes, content_type: str | None) -> tuple[int, int] | None:
    if not content_type or not content_type.startswith("image/"):
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------
# The world: users, roles, channels, members, guilds


@dataclass
class FakeUser:
    """A Discord user (``bot=True`` for bot accounts)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        """The user object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": self.avatar,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
            "collectibles": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class FakeRole:
    """A guild role. The @everyone role has the guild's id."""

    id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    hoist: bool = False
    managed: bool = False
    mentionable: bool = False
    tags: dict[str, Any] | None = None

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        """The role object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": self.color,
            "colors": {"primary_color": self.color, "secondary_color": None, "tertiary_color": None},
            "hoist": self.hoist,
            "managed": self.managed,
            "mentionable": self.mentionable,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.tags is not None:
            data["tags"] = self.tags
        return data


@dataclass
class FakeChannel:
    """A guild channel (type 0 text by default) or a DM channel (type 1).

    ``overwrites`` are Discord permission overwrites: ``{"id", "type" (0 role, 1 member), "allow", "deny"}``;
    add them with :meth:`set_permissions`.
    """

    id: int
    name: str
    type: int = 0
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    parent_id: int | None = None
    nsfw: bool = False
    overwrites: list[dict[str, Any]] = field(default_factory=list)
    recipients: list[FakeUser] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def set_permissions(self, target: Any, *, allow: Any = 0, deny: Any = 0) -> None:
        """Add or replace the overwrite for a role or member (a Fake* object or its id).

        A :class:`FakeMember` or :class:`FakeUser` target makes a member overwrite, anything else a role one.
        """
        target_id = _id_of(target)
        kind = 1 if isinstance(target, FakeMember | FakeUser) else 0
        self.overwrites = [o for o in self.overwrites if int(o["id"]) != target_id]
        self.overwrites.append(
            {"id": str(target_id), "type": kind, "allow": str(_perm_value(allow)), "deny": str(_perm_value(deny))}
        )

    def payload(self) -> dict[str, Any]:
        """The channel object as Discord sends it."""
        if self.type == 1:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": str(self.last_message_id) if self.last_message_id else None,
                "recipients": [u.payload() for u in self.recipients],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": copy.deepcopy(self.overwrites),
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "topic": self.topic,
            "nsfw": self.nsfw,
            "rate_limit_per_user": 0,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
            "flags": 0,
        }


@dataclass
class FakeMember:
    """A user's membership of a guild."""

    user: FakeUser
    guild_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: dt.datetime = field(default_factory=_now)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def mention(self) -> str:
        return self.user.mention

    def payload(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        """The guild member object; ``permissions`` is added as interactions carry it."""
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": _iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeGuild:
    """A guild with its roles, channels and members.

    Build with :meth:`FakeDiscord.add_guild`, then :meth:`add_role`, :meth:`add_channel`,
    :meth:`add_member`. ``premium_tier`` drives ``Guild.filesize_limit`` on the client and the fake's
    upload limit; ``upload_limit`` overrides the latter (and the interactions' ``attachment_size_limit``).
    """

    id: int
    name: str
    owner_id: int
    premium_tier: int = 0
    features: list[str] = field(default_factory=list)
    preferred_locale: str = "en-US"
    upload_limit: int | None = None
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    automod_rules: list[dict[str, Any]] = field(default_factory=list)  # served at /auto-moderation/rules

    def __post_init__(self) -> None:
        if self.id not in self.roles:
            self.roles[self.id] = FakeRole(id=self.id, name="@everyone", permissions=Perm.DEFAULT_EVERYONE)

    @property
    def everyone(self) -> FakeRole:
        """The @everyone role (its id is the guild id)."""
        return self.roles[self.id]

    @property
    def filesize_limit(self) -> int:
        """Largest attachment accepted in this guild, in bytes."""
        if self.upload_limit is not None:
            return self.upload_limit
        return PREMIUM_UPLOAD_LIMITS.get(self.premium_tier, DEFAULT_UPLOAD_LIMIT)

    @property
    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type in (0, 5)]

    def add_role(self, name: str, permissions: Any = 0, **kwargs: Any) -> FakeRole:
        """Create a role; ``permissions`` is an int or ``discord.Permissions``."""
        role = FakeRole(
            id=kwargs.pop("id", None) or make_snowflake(),
            name=name,
            permissions=_perm_value(permissions),
            position=kwargs.pop("position", len(self.roles)),
            **kwargs,
        )
        self.roles[role.id] = role
        return role

    def add_channel(self, name: str, *, type: int = 0, **kwargs: Any) -> FakeChannel:
        """Create a channel (text by default)."""
        channel = FakeChannel(
            id=kwargs.pop("id", None) or make_snowflake(),
            name=name,
            type=type,
            guild_id=self.id,
            position=kwargs.pop("position", len(self.channels)),
            **kwargs,
        )
        self.channels[channel.id] = channel
        return channel

    def add_automod_rule(
        self,
        name: str,
        *,
        keyword_filter: Sequence[str] = (),
        regex_patterns: Sequence[str] = (),
        allow_list: Sequence[str] = (),
        enabled: bool = True,
        trigger_type: int = 1,
        exempt_roles: Iterable[Any] = (),
        exempt_channels: Iterable[Any] = (),
    ) -> dict[str, Any]:
        """Add an AutoMod rule as Discord stores it (trigger_type 1: KEYWORD; event_type 1: MESSAGE_SEND)."""
        rule = {
            "id": str(make_snowflake()),
            "guild_id": str(self.id),
            "name": name,
            "creator_id": str(self.owner_id),
            "event_type": 1,
            "trigger_type": trigger_type,
            "trigger_metadata": {
                "keyword_filter": list(keyword_filter),
                "regex_patterns": list(regex_patterns),
                "allow_list": list(allow_list),
            },
            "actions": [{"type": 1, "metadata": {}}],
            "enabled": enabled,
            "exempt_roles": [str(_id_of(r)) for r in exempt_roles],
            "exempt_channels": [str(_id_of(c)) for c in exempt_channels],
        }
        self.automod_rules.append(rule)
        return rule

    def add_member(self, user: FakeUser | str, *, roles: Iterable[Any] = (), nick: str | None = None) -> FakeMember:
        """Add a member; pass a :class:`FakeUser` or just a username (a user is made for it)."""
        if isinstance(user, str):
            user = FakeUser(id=make_snowflake(), username=user)
        member = FakeMember(user=user, guild_id=self.id, roles=[_id_of(r) for r in roles], nick=nick)
        self.members[user.id] = member
        return member

    def member_named(self, username: str) -> FakeMember:
        """The member whose username is ``username``."""
        for member in self.members.values():
            if member.user.username == username:
                return member
        raise KeyError(username)

    def base_permissions(self, member_id: int) -> int:
        """Guild-level permissions of a member (owner and Administrator get everything)."""
        if member_id == self.owner_id:
            return Perm.ALL
        member = self.members.get(member_id)
        perms = self.everyone.permissions
        if member is not None:
            for role_id in member.roles:
                role = self.roles.get(role_id)
                if role is not None:
                    perms |= role.permissions
        if perms & Perm.ADMINISTRATOR:
            return Perm.ALL
        return perms

    def channel_permissions(self, member_id: int, channel_id: int) -> int:
        """Permissions of a member in a channel, overwrites applied as Discord does."""
        perms = self.base_permissions(member_id)
        if perms == Perm.ALL:
            return perms
        channel = self.channels.get(channel_id)
        if channel is None:
            return perms
        member = self.members.get(member_id)
        overwrites = {(int(o["id"]), int(o["type"])): o for o in channel.overwrites}
        everyone = overwrites.get((self.id, 0))
        if everyone:
            perms = (perms & ~int(everyone["deny"])) | int(everyone["allow"])
        allow = deny = 0
        for role_id in member.roles if member else []:
            ow = overwrites.get((role_id, 0))
            if ow:
                allow |= int(ow["allow"])
                deny |= int(ow["deny"])
        perms = (perms & ~deny) | allow
        own = overwrites.get((member_id, 1))
        if own:
            perms = (perms & ~int(own["deny"])) | int(own["allow"])
        if not perms & Perm.VIEW_CHANNEL:
            return 0
        return perms

    def payload(self) -> dict[str, Any]:
        """The full GUILD_CREATE payload."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": {0: 0, 1: 2, 2: 7, 3: 14}.get(self.premium_tier, 0),
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.preferred_locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "features": list(self.features),
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "application_id": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "incidents_data": None,
            "joined_at": _iso(_now()),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [m.payload() for m in self.members.values()],
            "channels": [c.payload() for c in self.channels.values()],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "lazy": True,
        }


# --------------------------------------------------------------------------------------------------
# Messages and what was recorded


@dataclass
class UploadedFile:
    """One ``files[n]`` part of a multipart request, as received."""

    field_name: str
    filename: str
    content_type: str | None
    data: bytes

    @property
    def index(self) -> int | None:
        """``n`` of ``files[n]``, the id the payload's ``attachments`` list refers to it by."""
        match = re.fullmatch(r"files\[(\d+)\]", self.field_name) or re.fullmatch(r"file(\d*)", self.field_name)
        if match is None:
            return None
        return int(match.group(1) or 0)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class FakeAttachment:
    """An attachment stored by the fake; ``data`` holds the uploaded bytes."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_png(self) -> bool:
        return self.data.startswith(b"\x89PNG\r\n\x1a\n")

    @property
    def is_spoiler(self) -> bool:
        """Discord blurs an attachment whose file name starts with SPOILER_."""
        return self.filename.startswith("SPOILER_")

    def payload(self) -> dict[str, Any]:
        """The attachment object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url.replace("/attachments/", "/media/attachments/", 1),
            "content_type": self.content_type,
            "placeholder": None,
            "placeholder_version": 1,
            "flags": 0,
        }
        if self.description is not None:
            data["description"] = self.description
        if self.width is not None:
            data["width"] = self.width
            data["height"] = self.height
        return data


@dataclass
class MessageRevision:
    """The state of a message after its creation or one edit."""

    content: str
    embeds: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    components: list[dict[str, Any]]
    flags: int
    allowed_mentions: dict[str, Any] | None
    at: dt.datetime
    payload: dict[str, Any] | None = None
    files: list[UploadedFile] = field(default_factory=list)
    route: str = ""

    @property
    def custom_ids(self) -> list[str]:
        """Every ``custom_id`` in the components, depth first."""
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def attachment(self, filename: str) -> FakeAttachment:
        """The attachment named ``filename``."""
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        raise KeyError(filename)


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for component in components:
        yield component
        yield from _walk_components(component.get("components", []))
        if isinstance(component.get("accessory"), dict):
            yield from _walk_components([component["accessory"]])
        if isinstance(component.get("component"), dict):
            yield from _walk_components([component["component"]])


class FakeMessage:
    """A message as the fake holds it: its current state plus every revision.

    Attributes mirror the current revision (``content``, ``embeds``, ``attachments``, ``components``,
    ``flags``, ``allowed_mentions``); ``history`` has every revision, ``history[0]`` being the
    creation; ``deleted`` tells whether it was deleted.
    """

    def __init__(
        self,
        *,
        id: int,
        channel_id: int,
        guild_id: int | None,
        author: FakeUser,
        revision: MessageRevision,
        type: int = 0,
        application_id: int | None = None,
        interaction: FakeInteraction | None = None,
        message_reference: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.channel_id = channel_id
        self.guild_id = guild_id
        self.author = author
        self.type = type
        self.application_id = application_id
        self.interaction = interaction
        self.message_reference = message_reference
        self.history: list[MessageRevision] = [revision]
        self.deleted = False
        self.created_at = revision.at

    @property
    def current(self) -> MessageRevision:
        return self.history[-1]

    @property
    def content(self) -> str:
        return self.current.content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.current.embeds

    @property
    def attachments(self) -> list[FakeAttachment]:
        return self.current.attachments

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.current.components

    @property
    def flags(self) -> int:
        return self.current.flags

    @property
    def allowed_mentions(self) -> dict[str, Any] | None:
        return self.current.allowed_mentions

    @property
    def custom_ids(self) -> list[str]:
        return self.current.custom_ids

    @property
    def edits(self) -> list[MessageRevision]:
        """The revisions after creation, in order."""
        return self.history[1:]

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlag.EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while a deferred "is thinking..." response has not been edited."""
        return bool(self.flags & MessageFlag.LOADING)

    def attachment(self, filename: str) -> FakeAttachment:
        """The current attachment named ``filename``."""
        return self.current.attachment(filename)

    def component(self, custom_id: str) -> dict[str, Any]:
        """The component with this ``custom_id``."""
        for component in _walk_components(self.components):
            if component.get("custom_id") == custom_id:
                return component
        raise KeyError(f"no component {custom_id!r} on message {self.id}; have {self.custom_ids}")

    @property
    def mentions(self) -> tuple[set[int], set[int], bool]:
        """(users, roles, everyone) that the current content pings, given ``allowed_mentions``."""
        return _resolve_mentions(self.content, self.allowed_mentions)

    def payload(self) -> dict[str, Any]:
        """The message object as REST answers it (gateway events add ``guild_id`` and ``member``)."""
        rev = self.current
        users, roles, everyone = self.mentions
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "author": self.author.payload(),
            "content": rev.content,
            "embeds": copy.deepcopy(rev.embeds),
            "attachments": [a.payload() for a in rev.attachments],
            "components": copy.deepcopy(rev.components),
            "flags": rev.flags,
            "timestamp": _iso(self.created_at),
            "edited_timestamp": _iso(rev.at) if len(self.history) > 1 else None,
            "tts": False,
            "mention_everyone": everyone,
            "mentions": [{"id": str(u), "username": "", "discriminator": "0", "avatar": None} for u in users],
            "mention_roles": [str(r) for r in roles],
            "pinned": False,
            "reactions": [],
            "sticker_items": [],
        }
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        fi = self.interaction
        if fi is not None:
            data["webhook_id"] = str(fi.application_id)
            data["interaction_metadata"] = {
                "id": str(fi.id),
                "type": fi.type,
                "user": fi.user.payload(),
                "authorizing_integration_owners": fi.payload.get("authorizing_integration_owners", {}),
            }
            if fi.command_name:
                data["interaction_metadata"]["name"] = fi.command_name
                data["interaction"] = {
                    "id": str(fi.id),
                    "type": fi.type,
                    "name": fi.command_name,
                    "user": fi.user.payload(),
                }
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data

    def __repr__(self) -> str:
        return (
            f"<FakeMessage id={self.id} channel={self.channel_id} content={self.content!r} "
            f"embeds={len(self.embeds)} attachments={[a.filename for a in self.attachments]} "
            f"flags={self.flags} edits={len(self.edits)} deleted={self.deleted}>"
        )


def _resolve_mentions(content: str, allowed: dict[str, Any] | None) -> tuple[set[int], set[int], bool]:
    users = {int(u) for u in re.findall(r"<@!?(\d+)>", content)}
    roles = {int(r) for r in re.findall(r"<@&(\d+)>", content)}
    everyone = "@everyone" in content or "@here" in content
    if allowed is None:
        return users, roles, everyone
    parse = allowed.get("parse", [])
    if "users" not in parse:
        users &= {int(u) for u in allowed.get("users", [])}
    if "roles" not in parse:
        roles &= {int(r) for r in allowed.get("roles", [])}
    return users, roles, everyone and "everyone" in parse


@dataclass
class RecordedRequest:
    """One HTTP request the fake answered."""

    method: str
    path: str
    query: dict[str, str]
    route: str
    json: Any
    files: list[UploadedFile]
    status: int = 0
    response: Any = None
    authorization: str | None = None
    at: float = field(default_factory=time.monotonic)  # when the request arrived (for benches)

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} -> {self.status}>"


@dataclass
class Callback:
    """An interaction callback (the first response)."""

    type: int
    data: dict[str, Any] | None
    files: list[UploadedFile]

    @property
    def ephemeral(self) -> bool:
        return bool((self.data or {}).get("flags", 0) & MessageFlag.EPHEMERAL)


@dataclass
class CommandSync:
    """One bulk overwrite of application commands (``tree.sync``); ``guild_id`` None means global."""

    guild_id: int | None
    commands: list[dict[str, Any]]


@dataclass
class GatewayConnection:
    """One websocket connection to the fake gateway."""

    path: str
    query: dict[str, str]
    ws: web.WebSocketResponse
    ops: list[int] = field(default_factory=list)
    close_code: int | None = None


@dataclass
class Fault:
    """An injected failure, answered instead of the real response while ``remaining`` is not 0."""

    match: Callable[[RecordedRequest], bool]
    status: int
    body: Any
    headers: dict[str, str]
    remaining: int | None  # None: forever
    hits: int = 0

    def remove(self) -> None:
        self.remaining = 0


@dataclass
class Hold:
    """Matching requests wait (as behind an exhausted rate-limit bucket) until :meth:`release`."""

    match: Callable[[RecordedRequest], bool]
    released: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hits: int = 0

    def release(self) -> None:
        self.released.set()


# --------------------------------------------------------------------------------------------------
# Interactions


class FakeInteraction:
    """An interaction the fake dispatched, and everything the bot did with its token.

    * ``callbacks``: the interaction callbacks (normally exactly one);
    * ``message``: the original response message (for component interactions answered with type 6 or 7,
      the message the component is on);
    * ``edits``: each edit of the original response (``PATCH .../messages/@original``, and type 7
      updates), as :class:`MessageRevision` (``content``, ``embeds``, ``attachments``, ``payload``...);
    * ``followups``: messages sent with ``POST /webhooks/{app}/{token}``;
    * ``requests``: every callback/webhook request made with this token.
    """

    def __init__(self, fd: FakeDiscord, payload: dict[str, Any], *, user: FakeUser, source: FakeMessage | None):
        self._fd = fd
        self.payload = payload
        self.id = int(payload["id"])
        self.type: int = payload["type"]
        self.token: str = payload["token"]
        self.application_id = int(payload["application_id"])
        self.guild_id = int(payload["guild_id"]) if payload.get("guild_id") else None
        self.channel_id = int(payload["channel"]["id"])
        self.user = user
        self.attachment_size_limit: int = payload["attachment_size_limit"]
        self.source_message = source
        data = payload.get("data", {})
        self.command_name: str | None = data.get("name") if self.type in (2, 4) else None
        self.callbacks: list[Callback] = []
        self.message: FakeMessage | None = None
        self.edits: list[MessageRevision] = []
        self.followups: list[FakeMessage] = []
        self.requests: list[RecordedRequest] = []
        self.expired = False

    @property
    def callback(self) -> Callback | None:
        """The first callback, if any."""
        return self.callbacks[0] if self.callbacks else None

    @property
    def response_type(self) -> int | None:
        return self.callback.type if self.callback else None

    @property
    def autocomplete_choices(self) -> list[dict[str, Any]] | None:
        """The choices of an autocomplete answer (callback type 8), if answered."""
        for cb in self.callbacks:
            if cb.type == CallbackType.AUTOCOMPLETE_RESULT:
                return (cb.data or {}).get("choices", [])
        return None

    @property
    def modal(self) -> dict[str, Any] | None:
        """The modal the bot opened (callback type 9 data), if any."""
        for cb in self.callbacks:
            if cb.type == CallbackType.MODAL:
                return cb.data
        return None

    def expire(self) -> None:
        """Make the token invalid, as after 15 minutes: webhook calls get 401 (code 50027) and a
        callback gets 404 (10062 Unknown interaction)."""
        self.expired = True

    async def wait_for(self, predicate: Callable[[FakeInteraction], T], timeout: float = 10) -> T:
        """Wait until ``predicate(self)`` is truthy and return its value."""
        return await self._fd.wait_for(lambda: predicate(self), timeout, what=f"interaction {self.command_name}")

    async def wait_for_callback(self, timeout: float = 10) -> Callback:
        """Wait for the interaction callback and return it."""
        return await self.wait_for(lambda fi: fi.callback, timeout)

    async def wait_for_edit(
        self, predicate: Callable[[MessageRevision], Any] | None = None, timeout: float = 10
    ) -> MessageRevision:
        """Wait for an edit of the original response matching ``predicate`` (any edit if None)."""

        def find(fi: FakeInteraction) -> MessageRevision | None:
            return next((e for e in fi.edits if predicate is None or predicate(e)), None)

        return await self.wait_for(find, timeout)

    async def wait_for_edits(self, count: int, timeout: float = 10) -> list[MessageRevision]:
        """Wait until at least ``count`` edits of the original response arrived; return them all."""
        return await self.wait_for(lambda fi: fi.edits if len(fi.edits) >= count else None, timeout)

    async def wait_for_followup(
        self, predicate: Callable[[FakeMessage], Any] | None = None, timeout: float = 10
    ) -> FakeMessage:
        """Wait for a follow-up message matching ``predicate``."""

        def find(fi: FakeInteraction) -> FakeMessage | None:
            return next((m for m in fi.followups if predicate is None or predicate(m)), None)

        return await self.wait_for(find, timeout)

    async def wait_for_message_state(self, predicate: Callable[[FakeMessage], Any], timeout: float = 10) -> FakeMessage:
        """Wait until the original response message, as it is now, satisfies ``predicate``."""
        return await self.wait_for(lambda fi: fi.message if fi.message and predicate(fi.message) else None, timeout)

    def __repr__(self) -> str:
        return (
            f"<FakeInteraction id={self.id} type={self.type} name={self.command_name!r} "
            f"callbacks={[c.type for c in self.callbacks]} edits={len(self.edits)} "
            f"followups={len(self.followups)} expired={self.expired}>"
        )


# --------------------------------------------------------------------------------------------------
# Gateway session


class _Session:
    def __init__(self, session_id: str, intents: int, shard: list[int] | None) -> None:
        self.id = session_id
        self.intents = intents
        self.shard = shard
        self.seq = 0
        self.sent: list[tuple[int, str]] = []
        self.ws: web.WebSocketResponse | None = None
        self.lock = asyncio.Lock()
        self.ready = False


# --------------------------------------------------------------------------------------------------
# Routing

_Handler = Callable[["_Ctx"], Any]


@dataclass
class _Ctx:
    request: web.Request
    params: dict[str, str]
    rec: RecordedRequest

    @property
    def json(self) -> Any:
        return self.rec.json

    @property
    def files(self) -> list[UploadedFile]:
        return self.rec.files


class FakeDiscord:
    """The fake Discord server. Use as ``async with FakeDiscord() as fd:``.

    By default it holds one guild (``fd.guild``) with a text channel ``#general`` (``fd.channel``), the
    bot's member with a managed role that has every permission but Administrator, the owner
    (``fd.owner``), an admin with Manage Server (``fd.admin``) and two plain members (``fd.alice``,
    ``fd.bob``). Pass ``default_guild=False`` and use :meth:`add_guild` to build your own.

    Connect discord.py with :meth:`patch_discord` (or :meth:`running`, which also starts and stops a
    client). Then drive it with :meth:`send_slash_command`, :meth:`send_autocomplete`,
    :meth:`click_button`, :meth:`select`, :meth:`submit_modal`; inspect ``requests``,
    ``command_syncs``, ``messages``, ``interactions``; inject faults with
    :meth:`FakeInteraction.expire`, :meth:`inject_fault`, :meth:`rate_limit_next`,
    :meth:`fail_channel_sends` and upload limits; test reconnects with :meth:`disconnect_gateway`.
    """

    def __init__(
        self,
        *,
        application_id: int | None = None,
        bot_name: str = "Imagine",
        default_guild: bool = True,
        heartbeat_interval_ms: int = 41250,
        allowed_privileged_intents: int = Intent.PRIVILEGED,
    ) -> None:
        self.application_id = application_id or make_snowflake()
        #: The bot's user; its id equals the application id, as for bots created since 2022.
        self.bot_user = FakeUser(id=self.application_id, username=bot_name, bot=True)
        self.application_owner = FakeUser(id=make_snowflake(), username="app-owner")
        #: When set, the application belongs to a team of these users (role, e.g. "admin" or "read_only").
        self.application_team: list[tuple[FakeUser, str]] | None = None
        #: When set, IDENTIFY is answered with READY only once this event is set (a bot logged in over REST
        #: but not yet connected to the gateway).
        self.ready_gate: asyncio.Event | None = None
        self.application_flags = (1 << 13) | (1 << 15) | (1 << 19) | (1 << 23)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allowed_privileged_intents = allowed_privileged_intents
        #: Overrides every upload limit when set (bytes per attachment).
        self.upload_limit: int | None = None
        #: The only bot token REST accepts (anything else gets 401, as a wrong token does on Discord).
        self.bot_token = DEFAULT_TOKEN

        self.guilds: dict[int, FakeGuild] = {}
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.dm_channels: dict[int, FakeChannel] = {}

        self.requests: list[RecordedRequest] = []
        self.unknown_requests: list[RecordedRequest] = []
        self.command_syncs: list[CommandSync] = []
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: list[FakeInteraction] = []
        self.attachments: dict[int, FakeAttachment] = {}
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []
        self.gateway_connections: list[GatewayConnection] = []
        self.identify_count = 0
        self.resume_count = 0
        self.identify_payloads: list[dict[str, Any]] = []
        self.presence_updates: list[dict[str, Any]] = []

        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._session: _Session | None = None
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._routes: list[tuple[str, re.Pattern[str], str, _Handler]] = []
        self._build_routes()

        self.guild: FakeGuild | None = None
        self.channel: FakeChannel | None = None
        self.bot_member: FakeMember | None = None
        self.owner = self.admin = self.alice = self.bob = None
        if default_guild:
            self._build_default_world()

    # ------------------------------------------------------------------ configuration

    def _build_default_world(self) -> None:
        owner = FakeUser(id=make_snowflake(), username="owner", global_name="Guild Owner")
        guild = self.add_guild("Fake Guild", owner=owner)
        self.guild = guild
        self.channel = guild.add_channel("general")
        admin_role = guild.add_role("Admin", Perm.MANAGE_GUILD | Perm.MANAGE_MESSAGES | Perm.MANAGE_ROLES)
        self.owner = guild.members[owner.id]
        self.admin = guild.add_member(FakeUser(id=make_snowflake(), username="admin"), roles=[admin_role])
        self.alice = guild.add_member(FakeUser(id=make_snowflake(), username="alice", global_name="Alice"))
        self.bob = guild.add_member(FakeUser(id=make_snowflake(), username="bob", global_name="Bob"))
        self.bot_member = guild.members[self.bot_user.id]
        for member in guild.members.values():
            self.users[member.id] = member.user

    def add_guild(
        self,
        name: str,
        *,
        owner: FakeUser | None = None,
        premium_tier: int = 0,
        upload_limit: int | None = None,
        bot_permissions: Any = Perm.ALL & ~Perm.ADMINISTRATOR,
        features: Sequence[str] = (),
        preferred_locale: str = "en-US",
        id: int | None = None,
    ) -> FakeGuild:
        """Create a guild the bot is in: the owner and the bot (with a managed role holding
        ``bot_permissions``) are members. Add roles, channels and members on the returned guild.

        Guilds added while a client is connected reach it with a GUILD_CREATE at the next
        :meth:`announce_guild` call.
        """
        owner = owner or FakeUser(id=make_snowflake(), username=f"{name.lower().replace(' ', '-')}-owner")
        guild = FakeGuild(
            id=id or make_snowflake(),
            name=name,
            owner_id=owner.id,
            premium_tier=premium_tier,
            upload_limit=upload_limit,
            features=list(features),
            preferred_locale=preferred_locale,
        )
        guild.add_member(owner)
        bot_role = guild.add_role(
            self.bot_user.username, bot_permissions, managed=True, tags={"bot_id": str(self.bot_user.id)}
        )
        guild.add_member(self.bot_user, roles=[bot_role])
        self.users[owner.id] = owner
        self.guilds[guild.id] = guild
        return guild

    async def announce_guild(self, guild: FakeGuild) -> None:
        """Send GUILD_CREATE for a guild added after the client identified (the bot "joins" it)."""
        await self._dispatch("GUILD_CREATE", self._guild_create_payload(guild, self._require_session().intents))

    def add_user(self, username: str, **kwargs: Any) -> FakeUser:
        """Create a user that is in no guild (e.g. for DMs)."""
        user = FakeUser(id=make_snowflake(), username=username, **kwargs)
        self.users[user.id] = user
        return user

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be: ``http://127.0.0.1:PORT/api/v10``."""
        return f"{self.base_url}/api/v{API_VERSION}"

    @property
    def gateway_url(self) -> str:
        """The websocket URL the client connects to first."""
        return f"ws://127.0.0.1:{self._port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """The URL READY tells the client to resume at (a different path, to check it is used)."""
        return f"ws://127.0.0.1:{self._port}/gateway-resume"

    async def start(self) -> None:
        """Start serving on a free port (``async with`` does it for you)."""
        app = web.Application(client_max_size=1024 * MiB)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get("/gateway-resume", self._gateway_handler)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn_handler)
        app.router.add_get("/media/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn_handler)
        app.router.add_route("*", "/api/v{version}/{tail:.*}", self._api_handler)
        app.router.add_route("*", "/{tail:.*}", self._api_handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        """Close gateway connections and stop the server."""
        for hold in self.holds:
            hold.release()  # nothing may stay parked in a handler
        for conn in self.gateway_connections:
            if not conn.ws.closed:
                await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[FakeDiscord]:
        """Point discord.py's REST base and default gateway at this fake while the block runs."""
        import discord.gateway
        import discord.http

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    @contextlib.asynccontextmanager
    async def running(self, client: Any, *, token: str = DEFAULT_TOKEN, timeout: float = 10) -> AsyncIterator[Any]:
        """Patch discord.py, start ``client`` (``client.start(token)`` in a task), wait until it identified
        and got its guilds; on exit close the client and await its task.

        If the client fails to start (e.g. a ``setup_hook`` error) its exception is raised here.
        """
        with self.patch_discord():
            task = asyncio.create_task(client.start(token), name="fake-discord-client")
            try:
                # Wait for a new IDENTIFY: a previous client's session may still be resumable.
                before = self.identify_count
                ready = asyncio.create_task(
                    self.wait_for(
                        lambda: self.identify_count > before and self._session is not None and self._session.ready,
                        timeout,
                        what="IDENTIFY",
                    )
                )
                done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    ready.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ready
                    task.result()
                    raise RuntimeError("the client stopped before becoming ready")
                ready.result()
                yield client
            finally:
                await client.close()
                try:
                    await asyncio.wait_for(task, timeout)
                except asyncio.CancelledError:
                    pass

    # ------------------------------------------------------------------ waiting

    def _touch(self) -> None:
        """Wake every waiter: something changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10, *, what: str = "condition") -> T:
        """Wait until ``predicate()`` is truthy (checked after every change in the fake) and return it.

        Raises :class:`FakeDiscordTimeout` (an ``AssertionError``) listing the last requests on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "\n  ".join(repr(r) for r in self.requests[-15:]) or "(none)"
                raise FakeDiscordTimeout(f"timed out after {timeout}s waiting for {what}; last requests:\n  {recent}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    async def wait_until_ready(self, timeout: float = 10) -> None:
        """Wait until a client identified and every guild's GUILD_CREATE was sent."""
        await self.wait_for(lambda: self._session is not None and self._session.ready, timeout, what="IDENTIFY")

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], Any], timeout: float = 10, *, start: int = 0
    ) -> RecordedRequest:
        """Wait for a recorded request (from index ``start`` of ``requests``) matching ``predicate``."""

        def find() -> RecordedRequest | None:
            return next((r for r in self.requests[start:] if predicate(r)), None)

        return await self.wait_for(find, timeout, what="request")

    async def wait_for_message(
        self, channel_id: Any, predicate: Callable[[FakeMessage], Any] | None = None, timeout: float = 10
    ) -> FakeMessage:
        """Wait for a (not deleted) message in a channel whose current state matches ``predicate``."""
        cid = _id_of(channel_id)

        def find() -> FakeMessage | None:
            return next(
                (m for m in self.channel_messages(cid) if predicate is None or predicate(m)),
                None,
            )

        return await self.wait_for(find, timeout, what=f"message in channel {cid}")

    async def wait_for_resume(self, count: int = 1, timeout: float = 10) -> None:
        """Wait until the client resumed ``count`` times in total."""
        await self.wait_for(lambda: self.resume_count >= count, timeout, what="RESUME")

    # ------------------------------------------------------------------ inspection

    def channel_messages(self, channel_id: Any, *, include_ephemeral: bool = True) -> list[FakeMessage]:
        """Messages in a channel, oldest first, deleted ones left out."""
        cid = _id_of(channel_id)
        return [
            m
            for m in self.messages.values()
            if m.channel_id == cid and not m.deleted and (include_ephemeral or not m.ephemeral)
        ]

    def requests_to(self, pattern: str) -> list[RecordedRequest]:
        """Requests whose ``"METHOD route"`` (e.g. ``"PATCH /webhooks/{application_id}/{token}/..."``) or
        ``"METHOD path"`` matches the regular expression ``pattern``."""
        rx = re.compile(pattern)
        return [r for r in self.requests if rx.search(f"{r.method} {r.route}") or rx.search(f"{r.method} {r.path}")]

    def commands_for(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """The registered commands: a guild's, or the global ones."""
        return self.guild_commands.get(guild_id, []) if guild_id else self.global_commands

    # ------------------------------------------------------------------ faults

    def inject_fault(
        self,
        match: str | Callable[[RecordedRequest], bool],
        *,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer matching requests with ``status``/``body`` instead, ``times`` times (None: until removed).

        ``match`` is a predicate over :class:`RecordedRequest` or a regex searched in ``"METHOD path"``.
        """
        if isinstance(match, str):
            rx = re.compile(match)

            def predicate(r: RecordedRequest) -> bool:
                return bool(rx.search(f"{r.method} {r.path}"))
        else:
            predicate = match
        fault = Fault(predicate, status, body, dict(headers or {}), times)
        self.faults.append(fault)
        return fault

    def hold_requests(self, match: str | Callable[[RecordedRequest], bool]) -> Hold:
        """Keep matching requests waiting until the returned hold is released (Discord slowing a route)."""
        if isinstance(match, str):
            rx = re.compile(match)

            def predicate(r: RecordedRequest) -> bool:
                return bool(rx.search(f"{r.method} {r.path}"))
        else:
            predicate = match
        hold = Hold(predicate)
        self.holds.append(hold)
        return hold

    def drop_connections(self, match: str | Callable[[RecordedRequest], bool], *, times: int | None = 1) -> Fault:
        """Reset the connection of matching requests without answering (a network failure: the client
        sees a connection error, not an HTTP status)."""
        return self.inject_fault(match, status=0, body=None, times=times)

    def rate_limit_next(
        self, match: str | Callable[[RecordedRequest], bool], *, retry_after: float = 0.05, is_global: bool = False
    ) -> Fault:
        """Answer the next matching request with a 429 that discord.py retries (it carries ``Via``)."""
        return self.inject_fault(
            match,
            status=429,
            body={"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global},
            headers={
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(retry_after))),
                "X-RateLimit-Scope": "global" if is_global else "user",
            },
        )

    def fail_channel_sends(self, channel_id: Any = None, *, times: int | None = None) -> Fault:
        """Make ``POST /channels/{id}/messages`` (one channel, or all) fail with 403 Missing Permissions."""
        cid = None if channel_id is None else _id_of(channel_id)

        def match(r: RecordedRequest) -> bool:
            m = re.fullmatch(r"/channels/(\d+)/messages", r.path)
            return r.method == "POST" and m is not None and (cid is None or int(m.group(1)) == cid)

        return self.inject_fault(
            match,
            status=403,
            body={"message": "Missing Permissions", "code": ErrorCode.MISSING_PERMISSIONS},
            times=times,
        )

    def expire_interaction(self, interaction: FakeInteraction | str) -> None:
        """Expire an interaction's token (see :meth:`FakeInteraction.expire`)."""
        fi = interaction if isinstance(interaction, FakeInteraction) else self._interactions_by_token[interaction]
        fi.expire()

    # ------------------------------------------------------------------ gateway control

    async def disconnect_gateway(self, code: int = 4000, *, wait_for_resume: bool = True, timeout: float = 10) -> None:
        """Close the client's websocket with ``code`` (4000: unknown error, resumable).

        With ``wait_for_resume`` wait until the client came back and RESUMEd.
        """
        session = self._require_session()
        before = self.resume_count
        ws = session.ws
        session.ws = None
        if ws is not None and not ws.closed:
            await ws.close(code=code, message=b"fake disconnect")
        if wait_for_resume:
            await self.wait_for_resume(before + 1, timeout)

    async def send_reconnect(self, *, wait_for_resume: bool = True, timeout: float = 10) -> None:
        """Send op 7 RECONNECT, as Discord does before moving a session."""
        session = self._require_session()
        before = self.resume_count
        if session.ws is not None:
            await session.ws.send_str(json.dumps({"op": 7, "d": None}))
        if wait_for_resume:
            await self.wait_for_resume(before + 1, timeout)

    async def invalidate_session(self, *, timeout: float = 10) -> None:
        """Send op 9 INVALID_SESSION (not resumable) and wait for the client to identify again."""
        session = self._require_session()
        before = self.identify_count
        ws = session.ws
        self._session = None
        if ws is not None:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
        await self.wait_for(
            lambda: self.identify_count > before and self._session is not None and self._session.ready,
            timeout,
            what="re-IDENTIFY",
        )

    def _require_session(self) -> _Session:
        if self._session is None:
            raise RuntimeError("no client has identified with the fake gateway (use wait_until_ready first)")
        return self._session

    async def _send_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await ws.send_str(json.dumps(frame))

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH event on the current session (buffered for replay if disconnected)."""
        session = self._require_session()
        async with session.lock:
            session.seq += 1
            frame = json.dumps({"op": 0, "t": event, "s": session.seq, "d": data})
            session.sent.append((session.seq, frame))
            ws = session.ws
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await ws.send_str(frame)
        self._touch()

    async def _gateway_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        conn = GatewayConnection(path=request.path, query=dict(request.query), ws=ws)
        self.gateway_connections.append(conn)
        await self._send_frame(
            ws,
            {
                "op": 10,
                "d": {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ['["fake-gateway"]']},
                "s": None,
                "t": None,
            },
        )
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._on_gateway_message(conn, json.loads(msg.data))
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    break
        finally:
            conn.close_code = ws.close_code
            session = self._session
            if session is not None and session.ws is ws:
                session.ws = None
                # A client closing with 1000/1001 ends its session, as on Discord.
                if ws.close_code in (1000, 1001):
                    self._session = None
            self._touch()
        return ws

    async def _on_gateway_message(self, conn: GatewayConnection, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        data = msg.get("d")
        conn.ops.append(op)
        ws = conn.ws
        if op == 1:  # HEARTBEAT
            await self._send_frame(ws, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # IDENTIFY
            await self._identify(conn, data)
        elif op == 6:  # RESUME
            await self._resume(conn, data)
        elif op == 3:  # PRESENCE UPDATE
            self.presence_updates.append(data)
        elif op == 8:  # REQUEST GUILD MEMBERS
            await self._request_members(data)
        self._touch()

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        self.identify_payloads.append(data)
        intents = int(data.get("intents", 0))
        if not data.get("token"):
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        if intents & Intent.PRIVILEGED & ~self.allowed_privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self.identify_count += 1
        session = _Session(secrets.token_hex(16), intents, data.get("shard"))
        self._session = session
        session.ws = conn.ws
        ready: dict[str, Any] = {
            "v": API_VERSION,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["fake"],
            "user_settings": {},
            "auth": {},
            "_trace": ['["fake-gateway"]'],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        if self.ready_gate is not None:
            await self.ready_gate.wait()
        await self._dispatch("READY", ready)
        for guild in self.guilds.values():
            await self._dispatch("GUILD_CREATE", self._guild_create_payload(guild, intents))
        session.ready = True

    def _guild_create_payload(self, guild: FakeGuild, intents: int) -> dict[str, Any]:
        payload = guild.payload()
        if not intents & Intent.GUILD_MEMBERS:
            # Without the members intent Discord only sends the bot's own member.
            payload["members"] = [m for m in payload["members"] if m["user"]["id"] == str(self.bot_user.id)]
        return payload

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        session = self._session
        if session is None or data.get("session_id") != session.id:
            await self._send_frame(conn.ws, {"op": 9, "d": False, "s": None, "t": None})
            return
        seq = data.get("seq") or 0
        async with session.lock:
            session.ws = conn.ws
            for sent_seq, frame in session.sent:
                if sent_seq > seq:
                    with contextlib.suppress(ConnectionResetError, RuntimeError):
                        await conn.ws.send_str(frame)
        await self._dispatch("RESUMED", {"_trace": ['["fake-gateway"]']})
        self.resume_count += 1

    async def _request_members(self, data: dict[str, Any]) -> None:
        guild = self.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.user.username.startswith(data["query"])]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self._dispatch("GUILD_MEMBERS_CHUNK", chunk)

    # ------------------------------------------------------------------ interactions: building

    def _resolve_guild(self, guild_id: Any) -> FakeGuild | None:
        if guild_id is None:
            return self.guild or next(iter(self.guilds.values()), None)
        return self.guilds[_id_of(guild_id)]

    def _resolve_member(self, guild: FakeGuild, user: Any) -> FakeMember:
        if user is None:
            if self.alice is not None and self.alice.id in guild.members:
                return guild.members[self.alice.id]
            humans = [m for m in guild.members.values() if not m.user.bot]
            plain = [m for m in humans if m.id != guild.owner_id]
            return (plain or humans)[0]
        uid = _id_of(user)
        member = guild.members.get(uid)
        if member is None:
            raise ValueError(f"user {uid} is not a member of guild {guild.id}")
        return member

    def _interaction_base(
        self,
        type: int,
        data: dict[str, Any],
        *,
        user: Any,
        guild_id: Any,
        channel_id: Any,
        locale: str,
        app_permissions: Any,
        member_permissions: Any,
        attachment_size_limit: int | None,
    ) -> tuple[dict[str, Any], FakeUser]:
        guild = self._resolve_guild(guild_id)
        if guild is None:
            raise ValueError("no guild configured")
        member = self._resolve_member(guild, user)
        if channel_id is None:
            channel = self.channel if guild is self.guild and self.channel is not None else guild.text_channels[0]
        else:
            channel = guild.channels[_id_of(channel_id)]
        perms = (
            _perm_value(member_permissions)
            if member_permissions is not None
            else guild.channel_permissions(member.id, channel.id)
        )
        app_perms = (
            _perm_value(app_permissions)
            if app_permissions is not None
            else guild.channel_permissions(self.bot_user.id, channel.id)
        )
        limit = attachment_size_limit
        if limit is None:
            limit = self.upload_limit if self.upload_limit is not None else guild.filesize_limit
        payload: dict[str, Any] = {
            "id": str(make_snowflake()),
            "application_id": str(self.application_id),
            "type": type,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.preferred_locale, "features": list(guild.features)},
            "channel_id": str(channel.id),
            "channel": {**channel.payload(), "permissions": str(perms)},
            "member": member.payload(permissions=perms),
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96),
            "version": 1,
            "app_permissions": str(app_perms),
            "locale": locale,
            "guild_locale": guild.preferred_locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": limit,
        }
        return payload, member.user

    async def _send_interaction(
        self, payload: dict[str, Any], user: FakeUser, source: FakeMessage | None = None
    ) -> FakeInteraction:
        fi = FakeInteraction(self, payload, user=user, source=source)
        self.interactions.append(fi)
        self._interactions_by_token[fi.token] = fi
        await self._dispatch("INTERACTION_CREATE", payload)
        return fi

    def find_command(self, name: str, guild_id: int | None = None, type: int = 1) -> dict[str, Any] | None:
        """The registered command ``name`` visible in a guild (guild commands first, then global)."""
        pools = ([self.guild_commands.get(guild_id, [])] if guild_id else []) + [self.global_commands]
        for pool in pools:
            for command in pool:
                if command["name"] == name and command.get("type", 1) == type:
                    return command
        return None

    def _command_data(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[dict[str, Any]] | None,
        *,
        guild: FakeGuild,
        subcommand: str | None,
        group: str | None,
        focused: str | None = None,
    ) -> dict[str, Any]:
        parts = name.split()
        name = parts[0]
        if len(parts) == 3:
            group, subcommand = parts[1], parts[2]
        elif len(parts) == 2:
            subcommand = parts[1]
        command = self.find_command(name, guild.id)
        data: dict[str, Any] = {"name": name, "type": 1}
        if command is not None:
            data["id"] = command["id"]
            if command.get("guild_id"):
                data["guild_id"] = command["guild_id"]
        else:
            data["id"] = str(make_snowflake())
        resolved: dict[str, dict[str, Any]] = {}

        schema: list[dict[str, Any]] | None = command.get("options", []) if command is not None else None
        path: list[str] = [name]
        containers: list[dict[str, Any]] = []
        if group is not None and subcommand is None:
            # "admin credits" given as name+group: the last word is the subcommand.
            group, subcommand = None, group
        for level_name, level_type in ((group, 2), (subcommand, 1)):
            if level_name is None:
                continue
            if schema is not None:
                found = next((o for o in schema if o["name"] == level_name), None)
                if found is None:
                    raise ValueError(f"/{' '.join(path)} has no subcommand {level_name!r}")
                level_type = found["type"]
                schema = found.get("options", [])
            # A two-level path whose first word is a group in the schema still works.
            container = {"name": level_name, "type": level_type, "options": []}
            containers.append(container)
            path.append(level_name)
        leaf_options = self._build_options(options, schema, guild, resolved, "/" + " ".join(path), focused)
        if containers:
            containers[-1]["options"] = leaf_options
            for outer, inner in itertools.pairwise(containers):
                outer["options"] = [inner]
            data["options"] = [containers[0]]
        else:
            data["options"] = leaf_options
        if resolved:
            data["resolved"] = resolved
        return data

    def _build_options(
        self,
        options: Mapping[str, Any] | Sequence[dict[str, Any]] | None,
        schema: list[dict[str, Any]] | None,
        guild: FakeGuild,
        resolved: dict[str, dict[str, Any]],
        where: str,
        focused: str | None,
    ) -> list[dict[str, Any]]:
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            return [dict(o) for o in options]  # raw option dicts: sent as given
        by_name = {o["name"]: o for o in schema or []}
        if schema is not None:
            unknown = set(options) - set(by_name)
            if unknown:
                raise ValueError(f"{where} has no option(s) {sorted(unknown)}; it has {sorted(by_name)}")
            if focused is None:
                missing = [o["name"] for o in schema if o.get("required") and o["name"] not in options]
                if missing:
                    raise ValueError(f"{where} requires option(s) {missing}")
        built = []
        for opt_name, value in options.items():
            spec = by_name.get(opt_name)
            opt_type = spec["type"] if spec else _infer_option_type(value)
            entry: dict[str, Any] = {"name": opt_name, "type": opt_type}
            if opt_name == focused:
                entry["value"] = str(value)
                entry["focused"] = True
            else:
                entry["value"] = self._option_value(opt_type, value, spec, guild, resolved, f"{where} {opt_name}")
            built.append(entry)
        if focused is not None and focused not in options:
            built.append(
                {"name": focused, "type": by_name.get(focused, {}).get("type", 3), "value": "", "focused": True}
            )
        return built

    def _option_value(
        self,
        opt_type: int,
        value: Any,
        spec: dict[str, Any] | None,
        guild: FakeGuild,
        resolved: dict[str, dict[str, Any]],
        where: str,
    ) -> Any:
        if opt_type == OptionType.STRING:
            value = str(value)
            if spec and spec.get("max_length") is not None and len(value) > spec["max_length"]:
                raise ValueError(f"{where}: longer than max_length {spec['max_length']}")
            if spec and spec.get("min_length") is not None and len(value) < spec["min_length"]:
                raise ValueError(f"{where}: shorter than min_length {spec['min_length']}")
        elif opt_type == OptionType.INTEGER:
            if isinstance(value, bool) or (not isinstance(value, str) and int(value) != value):
                raise ValueError(f"{where}: {value!r} is not an integer")
            value = int(value)
        elif opt_type == OptionType.NUMBER:
            value = value if isinstance(value, int | float) and not isinstance(value, bool) else float(value)
        elif opt_type == OptionType.BOOLEAN:
            value = bool(value)
        elif opt_type in (OptionType.USER, OptionType.MENTIONABLE) and not isinstance(value, FakeRole):
            uid = _id_of(value)
            member = guild.members.get(uid)
            user = member.user if member else self.users.get(uid)
            if user is None:
                raise ValueError(f"{where}: unknown user {uid}")
            resolved.setdefault("users", {})[str(uid)] = user.payload()
            if member is not None:
                perms = guild.base_permissions(uid)
                resolved.setdefault("members", {})[str(uid)] = member.payload(with_user=False, permissions=perms)
            return str(uid)
        elif opt_type in (OptionType.ROLE, OptionType.MENTIONABLE):
            rid = _id_of(value)
            role = guild.roles.get(rid)
            if role is None:
                raise ValueError(f"{where}: unknown role {rid}")
            resolved.setdefault("roles", {})[str(rid)] = role.payload()
            return str(rid)
        elif opt_type == OptionType.CHANNEL:
            cid = _id_of(value)
            channel = guild.channels.get(cid)
            if channel is None:
                raise ValueError(f"{where}: unknown channel {cid}")
            types = (spec or {}).get("channel_types")
            if types and channel.type not in types:
                raise ValueError(f"{where}: channel type {channel.type} not in {types}")
            ch = channel.payload()
            resolved.setdefault("channels", {})[str(cid)] = {
                k: ch[k] for k in ("id", "type", "name", "parent_id", "nsfw", "flags", "guild_id")
            } | {"permissions": str(guild.channel_permissions(self.bot_user.id, cid))}
            return str(cid)
        elif opt_type == OptionType.ATTACHMENT:
            attachment = self.upload_attachment(value, channel_id=0)
            resolved.setdefault("attachments", {})[str(attachment.id)] = {
                **attachment.payload(),
                "ephemeral": True,
            }
            return str(attachment.id)
        if spec:
            choices = spec.get("choices")
            if choices and value not in [c["value"] for c in choices]:
                raise ValueError(f"{where}: {value!r} is not one of the choices {[c['value'] for c in choices]}")
            if spec.get("min_value") is not None and value < spec["min_value"]:
                raise ValueError(f"{where}: {value!r} < min_value {spec['min_value']}")
            if spec.get("max_value") is not None and value > spec["max_value"]:
                raise ValueError(f"{where}: {value!r} > max_value {spec['max_value']}")
        return value

    def upload_attachment(self, value: Any, *, channel_id: int = 0) -> FakeAttachment:
        """Store a file as the CDN would (for attachment options): ``value`` is a :class:`FakeAttachment`,
        ``(filename, bytes)`` or bytes."""
        if isinstance(value, FakeAttachment):
            self.attachments[value.id] = value
            return value
        if isinstance(value, bytes | bytearray):
            filename, data = "upload.bin", bytes(value)
        else:
            filename, data = value[0], bytes(value[1])
        return self._store_attachment(channel_id, filename, data, None)

    def _store_attachment(self, channel_id: int, filename: str, data: bytes, description: str | None) -> FakeAttachment:
        att_id = make_snowflake()
        ctype = sniff_content_type(data, filename)
        expires = int(time.time()) + 86400
        url = (
            f"{self.base_url}/attachments/{channel_id}/{att_id}/{filename}"
            f"?ex={expires:x}&is={int(time.time()):x}&hm={secrets.token_hex(32)}&"
        )
        size = _image_size(data, ctype)
        attachment = FakeAttachment(
            id=att_id,
            filename=filename,
            data=data,
            content_type=ctype,
            url=url,
            description=description,
            width=size[0] if size else None,
            height=size[1] if size else None,
        )
        self.attachments[att_id] = attachment
        return attachment

    # ------------------------------------------------------------------ interactions: public

    async def send_slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[dict[str, Any]] | None = None,
        *,
        user: Any = None,
        guild_id: Any = None,
        channel_id: Any = None,
        subcommand: str | None = None,
        group: str | None = None,
        locale: str = "en-US",
        app_permissions: Any = None,
        member_permissions: Any = None,
        attachment_size_limit: int | None = None,
    ) -> FakeInteraction:
        """Dispatch a slash command (INTERACTION_CREATE type 2) as a member would run it.

        ``name`` may hold the whole path (``"admin credits add"``) or use ``group``/``subcommand``.
        ``options`` maps option names to values; when the command was synced, option types, choices,
        ranges and required options come from the synced payload (a mistake raises ``ValueError``, as
        Discord's client would not let it through). Users, members, roles and channels (Fake* objects or
        ids) are put in ``data.resolved``; an attachment option takes ``(filename, bytes)``. A list
        of raw option dicts is sent as is.

        ``user`` defaults to ``fd.alice``, ``guild_id``/``channel_id`` to the default guild and channel.
        ``app_permissions`` and ``member_permissions`` default to what the roles and overwrites give;
        ``attachment_size_limit`` to the guild's upload limit.
        """
        guild = self._resolve_guild(guild_id)
        if guild is None:
            raise ValueError("no guild configured")
        data = self._command_data(name, options, guild=guild, subcommand=subcommand, group=group)
        payload, fuser = self._interaction_base(
            InteractionType.APPLICATION_COMMAND,
            data,
            user=user,
            guild_id=guild.id,
            channel_id=channel_id,
            locale=locale,
            app_permissions=app_permissions,
            member_permissions=member_permissions,
            attachment_size_limit=attachment_size_limit,
        )
        return await self._send_interaction(payload, fuser)

    async def send_autocomplete(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        focused: str,
        *,
        user: Any = None,
        guild_id: Any = None,
        channel_id: Any = None,
        subcommand: str | None = None,
        group: str | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Dispatch an autocomplete request (type 4) for option ``focused`` while the member typed
        ``options[focused]``; read the answer with ``await fi.wait_for_callback()`` or
        ``fi.autocomplete_choices``."""
        guild = self._resolve_guild(guild_id)
        if guild is None:
            raise ValueError("no guild configured")
        data = self._command_data(name, options, guild=guild, subcommand=subcommand, group=group, focused=focused)
        payload, fuser = self._interaction_base(
            InteractionType.AUTOCOMPLETE,
            data,
            user=user,
            guild_id=guild.id,
            channel_id=channel_id,
            locale=locale,
            app_permissions=None,
            member_permissions=None,
            attachment_size_limit=None,
        )
        return await self._send_interaction(payload, fuser)

    def _message_arg(self, message: Any) -> FakeMessage:
        if isinstance(message, FakeMessage):
            return message
        if isinstance(message, FakeInteraction):
            if message.message is None:
                raise ValueError(f"{message!r} has no response message")
            return message.message
        return self.messages[_id_of(message)]

    async def click_component(
        self,
        message: Any,
        custom_id: str,
        *,
        user: Any = None,
        values: Sequence[str] | None = None,
        locale: str = "en-US",
        app_permissions: Any = None,
        attachment_size_limit: int | None = None,
    ) -> FakeInteraction:
        """Dispatch a component interaction (type 3) for the component ``custom_id`` on ``message``
        (a :class:`FakeMessage`, its id, or a :class:`FakeInteraction` whose response holds it).

        Raises ``ValueError`` if the component is missing or disabled: a member could not click it.
        """
        msg = self._message_arg(message)
        if msg.deleted:
            raise ValueError(f"message {msg.id} was deleted")
        try:
            component = msg.component(custom_id)
        except KeyError as exc:
            raise ValueError(str(exc)) from None
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component.get("id") is not None:
            data["id"] = component["id"]
        if component["type"] != 2:
            data["values"] = list(values or [])
        elif values is not None:
            raise ValueError("values= is for select menus")
        guild_id = msg.guild_id
        if guild_id is None:
            raise ValueError("component interactions in DMs are not supported by the fake")
        payload, fuser = self._interaction_base(
            InteractionType.MESSAGE_COMPONENT,
            data,
            user=user,
            guild_id=guild_id,
            channel_id=msg.channel_id,
            locale=locale,
            app_permissions=app_permissions,
            member_permissions=None,
            attachment_size_limit=attachment_size_limit,
        )
        payload["message"] = msg.payload()
        return await self._send_interaction(payload, fuser, source=msg)

    async def click_button(self, message: Any, custom_id: str, *, user: Any = None, **kwargs: Any) -> FakeInteraction:
        """Click the button ``custom_id`` on ``message`` (see :meth:`click_component`)."""
        return await self.click_component(message, custom_id, user=user, **kwargs)

    async def select(
        self, message: Any, custom_id: str, values: Sequence[str], *, user: Any = None, **kwargs: Any
    ) -> FakeInteraction:
        """Choose ``values`` in the select menu ``custom_id`` on ``message``."""
        return await self.click_component(message, custom_id, user=user, values=values, **kwargs)

    async def submit_modal(
        self, opened_by: FakeInteraction, values: Mapping[str, str], *, user: Any = None
    ) -> FakeInteraction:
        """Submit the modal the bot opened in answer to ``opened_by``, with text input values by custom_id."""
        modal = opened_by.modal
        if modal is None:
            raise ValueError(f"{opened_by!r} did not open a modal")

        def fill(component: dict[str, Any]) -> dict[str, Any]:
            if component["type"] == 1:
                return {"type": 1, "components": [fill(c) for c in component.get("components", [])]}
            if component["type"] == 18:
                return {"type": 18, "component": fill(component["component"])}
            out = {"type": component["type"], "custom_id": component.get("custom_id")}
            if component["type"] == 4:
                out["value"] = values.get(component["custom_id"], component.get("value", ""))
            else:
                out["values"] = list(values.get(component.get("custom_id", ""), []))
            return out

        data = {"custom_id": modal["custom_id"], "components": [fill(c) for c in modal.get("components", [])]}
        payload, fuser = self._interaction_base(
            InteractionType.MODAL_SUBMIT,
            data,
            user=user if user is not None else opened_by.user,
            guild_id=opened_by.guild_id,
            channel_id=opened_by.channel_id,
            locale=opened_by.payload.get("locale", "en-US"),
            app_permissions=None,
            member_permissions=None,
            attachment_size_limit=opened_by.attachment_size_limit,
        )
        if opened_by.source_message is not None:
            payload["message"] = opened_by.source_message.payload()
        return await self._send_interaction(payload, fuser, source=opened_by.source_message)

    # ------------------------------------------------------------------ HTTP plumbing

    def _build_routes(self) -> None:
        r = self._route
        r("GET", "/gateway", self._get_gateway)
        r("GET", "/gateway/bot", self._get_gateway_bot)
        r("GET", "/users/@me", self._get_me)
        r("GET", "/users/{user_id}", self._get_user)
        r("POST", "/users/@me/channels", self._create_dm)
        r("GET", "/oauth2/applications/@me", self._get_application)
        r("GET", "/applications/@me", self._get_application)
        r("GET", "/applications/{application_id}/commands", self._get_commands)
        r("PUT", "/applications/{application_id}/commands", self._put_commands)
        r("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands)
        r("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands)
        r("GET", "/channels/{channel_id}", self._get_channel)
        r("POST", "/channels/{channel_id}/typing", self._typing)
        r("POST", "/channels/{channel_id}/messages", self._post_channel_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self._get_channel_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self._patch_channel_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_channel_message)
        r("GET", "/guilds/{guild_id}", self._get_guild)
        r("GET", "/guilds/{guild_id}/channels", self._get_guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self._get_guild_roles)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member)
        r("GET", "/guilds/{guild_id}/auto-moderation/rules", self._get_automod_rules)
        r("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback)
        r("POST", "/webhooks/{application_id}/{token}", self._post_followup)
        r("GET", "/webhooks/{application_id}/{token}/messages/{message_id}", self._get_webhook_message)
        r("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", self._patch_webhook_message)
        r("DELETE", "/webhooks/{application_id}/{token}/messages/{message_id}", self._delete_webhook_message)

    def _route(self, method: str, template: str, handler: _Handler) -> None:
        pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", template)
        self._routes.append((method, re.compile(f"^{pattern}$"), template, handler))

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        files: list[UploadedFile] = []
        if request.content_type.startswith("multipart/"):
            payload: Any = None
            reader = await request.multipart()
            async for part in reader:
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                raw = bytes(await part.read(decode=False))
                if part.name == "payload_json":
                    payload = json.loads(raw.decode())
                else:
                    files.append(
                        UploadedFile(
                            field_name=part.name or "",
                            filename=part.filename or part.name or "file",
                            content_type=part.headers.get("Content-Type"),
                            data=raw,
                        )
                    )
            return payload, files
        raw = await request.read()
        if not raw:
            return None, files
        try:
            return json.loads(raw), files
        except ValueError:
            return raw.decode(errors="replace"), files

    async def _api_handler(self, request: web.Request) -> web.StreamResponse:
        prefix = f"/api/v{API_VERSION}"
        path = request.path[len(prefix) :] if request.path.startswith(prefix) else request.path
        body, files = await self._read_body(request)
        rec = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            route=path,
            json=body,
            files=files,
            authorization=request.headers.get("Authorization"),
        )
        handler: _Handler | None = None
        params: dict[str, str] = {}
        if request.path.startswith(prefix):
            for method, rx, template, candidate in self._routes:
                match = rx.match(path)
                if match and method == request.method:
                    handler, params, rec.route = candidate, match.groupdict(), template
                    break
        response: web.Response
        for hold in self.holds:
            if not hold.released.is_set() and hold.match(rec):
                hold.hits += 1
                hold.arrived.set()
                await hold.released.wait()
        fault = next((f for f in self.faults if f.remaining != 0 and f.match(rec)), None)
        if fault is not None:
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
            if fault.status == 0:  # drop_connections: no answer at all
                self.requests.append(rec)
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("fake Discord dropped the connection")
            response = _json_response(fault.body, fault.status, fault.headers)
        elif handler is None:
            response = _error(404, 0, "404: Not Found" if not request.path.startswith(prefix) else "Unknown")
            self.unknown_requests.append(rec)
        else:
            needs_auth = not rec.route.startswith(("/webhooks/", "/interactions/"))
            if needs_auth and rec.authorization != f"Bot {self.bot_token}":
                response = _error(401, 0, "401: Unauthorized")
            else:
                response = await handler(_Ctx(request, params, rec))
        rec.status = response.status
        if response.body and isinstance(response.body, bytes):
            with contextlib.suppress(ValueError):
                rec.response = json.loads(response.body)
        self.requests.append(rec)
        token = params.get("token")
        if token and token in self._interactions_by_token:
            self._interactions_by_token[token].requests.append(rec)
        self._touch()
        return response

    async def _cdn_handler(self, request: web.Request) -> web.Response:
        attachment = self.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data, content_type=attachment.content_type or "application/octet-stream")

    # ------------------------------------------------------------------ REST: misc

    async def _get_gateway(self, ctx: _Ctx) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, ctx: _Ctx) -> web.Response:
        return _json_response(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1},
            }
        )

    async def _get_me(self, ctx: _Ctx) -> web.Response:
        return _json_response(
            {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"}
        )

    async def _get_user(self, ctx: _Ctx) -> web.Response:
        user = self.users.get(int(ctx.params["user_id"]))
        if user is None:
            return _error(404, ErrorCode.UNKNOWN_USER, "Unknown User")
        return _json_response(user.payload())

    async def _create_dm(self, ctx: _Ctx) -> web.Response:
        uid = int(ctx.json["recipient_id"])
        user = self.users.get(uid)
        if user is None:
            return _error(404, ErrorCode.UNKNOWN_USER, "Unknown User")
        for channel in self.dm_channels.values():
            if channel.recipients[0].id == uid:
                return _json_response(channel.payload())
        channel = FakeChannel(id=make_snowflake(), name="", type=1, recipients=[user])
        self.dm_channels[channel.id] = channel
        return _json_response(channel.payload())

    async def _get_application(self, ctx: _Ctx) -> web.Response:
        return _json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": secrets.token_hex(32),
                "flags": self.application_flags,
                "owner": self.application_owner.payload(),
                "team": None if self.application_team is None else self._team_payload(self.application_team),
                "bot": self.bot_user.payload(),
                "hook": True,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "install_params": {"scopes": ["bot", "applications.commands"], "permissions": "0"},
                "integration_types_config": {"0": {}},
                "approximate_guild_count": len(self.guilds),
                "tags": [],
            }
        )

    def _team_payload(self, members: list[tuple[FakeUser, str]]) -> dict[str, Any]:
        team_id = str(make_snowflake())
        return {
            "id": team_id,
            "name": "Fake Team",
            "icon": None,
            "owner_user_id": str(self.application_owner.id),
            "members": [
                {"user": user.payload(), "team_id": team_id, "membership_state": 2, "permissions": ["*"], "role": role}
                for user, role in members
            ],
        }

    def _find_channel(self, channel_id: int) -> tuple[FakeChannel | None, FakeGuild | None]:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild.channels[channel_id], guild
        return self.dm_channels.get(channel_id), None

    async def _get_channel(self, ctx: _Ctx) -> web.Response:
        channel, guild = self._find_channel(int(ctx.params["channel_id"]))
        if channel is None:
            return _error(404, ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")
        if guild is not None and not guild.channel_permissions(self.bot_user.id, channel.id) & Perm.VIEW_CHANNEL:
            return _error(403, ErrorCode.MISSING_ACCESS, "Missing Access")
        return _json_response(channel.payload())

    async def _typing(self, ctx: _Ctx) -> web.Response:
        return web.Response(status=204)

    async def _get_guild(self, ctx: _Ctx) -> web.Response:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            return _error(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        payload = guild.payload()
        for key in (
            "members",
            "channels",
            "threads",
            "presences",
            "voice_states",
            "joined_at",
            "large",
            "member_count",
            "stage_instances",
            "guild_scheduled_events",
            "soundboard_sounds",
            "lazy",
            "unavailable",
        ):
            payload.pop(key, None)
        return _json_response(payload)

    async def _get_guild_channels(self, ctx: _Ctx) -> web.Response:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            return _error(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        return _json_response([c.payload() for c in guild.channels.values()])

    async def _get_guild_roles(self, ctx: _Ctx) -> web.Response:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            return _error(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        return _json_response([r.payload() for r in guild.roles.values()])

    async def _get_member(self, ctx: _Ctx) -> web.Response:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            return _error(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        member = guild.members.get(int(ctx.params["user_id"]))
        if member is None:
            return _error(404, ErrorCode.UNKNOWN_MEMBER, "Unknown Member")
        return _json_response(member.payload())

    async def _get_automod_rules(self, ctx: _Ctx) -> web.Response:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            return _error(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        perms = guild.base_permissions(self.bot_user.id)
        if not perms & (Perm.MANAGE_GUILD | Perm.ADMINISTRATOR):
            return _error(403, ErrorCode.MISSING_PERMISSIONS, "Missing Permissions")
        return _json_response(copy.deepcopy(guild.automod_rules))

    # ------------------------------------------------------------------ REST: application commands

    async def _get_commands(self, ctx: _Ctx) -> web.Response:
        if int(ctx.params["application_id"]) != self.application_id:
            return _error(403, ErrorCode.MISSING_ACCESS, "Missing Access")
        gid = ctx.params.get("guild_id")
        return _json_response(self.commands_for(int(gid) if gid else None))

    async def _put_commands(self, ctx: _Ctx) -> web.Response:
        if int(ctx.params["application_id"]) != self.application_id:
            return _error(403, ErrorCode.MISSING_ACCESS, "Missing Access")
        gid = int(ctx.params["guild_id"]) if ctx.params.get("guild_id") else None
        if gid is not None and gid not in self.guilds:
            return _error(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        commands = ctx.json or []
        errors: dict[str, Any] = {}
        for index, command in enumerate(commands):
            errors.update(_validate_command(command, index))
        if errors:
            return _form_error(errors)
        previous = {(c["name"], c.get("type", 1)): c for c in self.commands_for(gid)}
        stored = []
        for command in commands:
            old = previous.get((command["name"], command.get("type", 1)))
            entry = {
                **copy.deepcopy(command),
                "id": old["id"] if old else str(make_snowflake()),
                "application_id": str(self.application_id),
                "version": str(make_snowflake()),
                "type": command.get("type", 1),
                "description": command.get("description", ""),
                "default_member_permissions": command.get("default_member_permissions"),
                "nsfw": command.get("nsfw", False),
            }
            if gid is not None:
                entry["guild_id"] = str(gid)
            stored.append(entry)
        if gid is None:
            self.global_commands = stored
        else:
            self.guild_commands[gid] = stored
        self.command_syncs.append(CommandSync(guild_id=gid, commands=copy.deepcopy(stored)))
        return _json_response(stored)

    # ------------------------------------------------------------------ REST: messages

    def _upload_limit_for(self, guild: FakeGuild | None, fi: FakeInteraction | None) -> int:
        if self.upload_limit is not None:
            return self.upload_limit
        if fi is not None:
            return fi.attachment_size_limit
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    def _check_files(self, files: list[UploadedFile], limit: int) -> web.Response | None:
        if any(f.size > limit for f in files):
            return _error(413, ErrorCode.REQUEST_TOO_LARGE, "Request entity too large")
        if len(files) > 10:
            return _form_error({"files": _field_error("BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")})
        return None

    def _new_revision(
        self,
        base: MessageRevision | None,
        payload: dict[str, Any],
        files: list[UploadedFile],
        channel_id: int,
        route: str,
    ) -> MessageRevision | web.Response:
        """Apply a create/edit payload to ``base`` (None for a new message); an error response if invalid."""
        payload = payload or {}
        errors = _validate_message(payload)
        if errors:
            return _form_error(errors)
        content = base.content if base else ""
        embeds = copy.deepcopy(base.embeds) if base else []
        components = copy.deepcopy(base.components) if base else []
        flags = base.flags if base else 0
        attachments = list(base.attachments) if base else []
        allowed = base.allowed_mentions if base else None
        if "content" in payload:
            content = payload["content"] or ""
        if "embeds" in payload:
            embeds = copy.deepcopy(payload["embeds"] or [])
        elif "embed" in payload:
            embeds = [payload["embed"]] if payload["embed"] else []
        if "components" in payload:
            components = copy.deepcopy(payload["components"] or [])
        if "allowed_mentions" in payload:
            allowed = payload["allowed_mentions"]
        if payload.get("flags") is not None:
            settable = MessageFlag.SUPPRESS_EMBEDS | MessageFlag.SUPPRESS_NOTIFICATIONS | MessageFlag.IS_COMPONENTS_V2
            if base is None:
                settable |= MessageFlag.EPHEMERAL
            flags = (flags & ~settable) | (int(payload["flags"]) & settable)
        by_index = {f.index: f for f in files if f.index is not None}
        used: set[int] = set()
        if "attachments" in payload and payload["attachments"] is not None:
            existing = {a.id: a for a in attachments}
            attachments = []
            for spec in payload["attachments"]:
                ref = int(spec["id"])
                if ref in existing:
                    attachments.append(existing[ref])
                elif ref in by_index:
                    upload = by_index[ref]
                    used.add(ref)
                    attachments.append(
                        self._store_attachment(
                            channel_id, spec.get("filename") or upload.filename, upload.data, spec.get("description")
                        )
                    )
                else:
                    return _form_error(
                        {
                            "attachments": _nest(
                                [len(attachments), "id"], _field_error("ATTACHMENT_NOT_FOUND", "Unknown attachment.")
                            )
                        }
                    )
        for upload in files:
            if upload.index not in used:
                attachments.append(self._store_attachment(channel_id, upload.filename, upload.data, None))
        if len(attachments) > 10:
            return _form_error({"attachments": _field_error("BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer.")})
        by_name = {a.filename: a for a in attachments}
        for embed in embeds:
            embed.setdefault("type", "rich")
            for key in ("image", "thumbnail"):
                media = embed.get(key)
                if isinstance(media, dict) and str(media.get("url", "")).startswith("attachment://"):
                    target = by_name.get(media["url"][len("attachment://") :])
                    if target is not None:
                        media.update(
                            url=target.url,
                            proxy_url=target.url,
                            width=target.width,
                            height=target.height,
                            content_type=target.content_type,
                            flags=0,
                        )
        if not content and not embeds and not attachments and not components and not payload.get("sticker_ids"):
            return _error(400, ErrorCode.EMPTY_MESSAGE, "Cannot send an empty message")
        return MessageRevision(
            content=content,
            embeds=embeds,
            attachments=attachments,
            components=components,
            flags=flags,
            allowed_mentions=allowed,
            at=_now(),
            payload=copy.deepcopy(payload),
            files=list(files),
            route=route,
        )

    def _create_message(
        self,
        *,
        channel_id: int,
        guild_id: int | None,
        revision: MessageRevision,
        type: int = 0,
        interaction: FakeInteraction | None = None,
        reference: dict[str, Any] | None = None,
    ) -> FakeMessage:
        message = FakeMessage(
            id=make_snowflake(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=self.bot_user,
            revision=revision,
            type=type,
            application_id=self.application_id if interaction else None,
            interaction=interaction,
            message_reference=reference,
        )
        self.messages[message.id] = message
        channel, _ = self._find_channel(channel_id)
        if channel is not None and not message.ephemeral:
            channel.last_message_id = message.id
        return message

    def _gateway_message(self, message: FakeMessage) -> dict[str, Any]:
        data = message.payload()
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
            member = self.guilds[message.guild_id].members.get(message.author.id)
            if member is not None:
                data["member"] = member.payload(with_user=False)
        return data

    def _wants_message_events(self, message: FakeMessage) -> bool:
        session = self._session
        if session is None or message.ephemeral:
            return False
        bit = Intent.GUILD_MESSAGES if message.guild_id is not None else Intent.DIRECT_MESSAGES
        return bool(session.intents & bit)

    async def _announce(self, message: FakeMessage, event: str) -> None:
        if not self._wants_message_events(message):
            return
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            await self._dispatch(event, data)
        else:
            await self._dispatch(event, self._gateway_message(message))

    async def _post_channel_message(self, ctx: _Ctx) -> web.Response:
        cid = int(ctx.params["channel_id"])
        channel, guild = self._find_channel(cid)
        if channel is None:
            return _error(404, ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")
        payload = dict(ctx.json or {})
        if guild is not None:
            perms = guild.channel_permissions(self.bot_user.id, cid)
            if not perms & Perm.VIEW_CHANNEL:
                return _error(403, ErrorCode.MISSING_ACCESS, "Missing Access")
            needed = Perm.SEND_MESSAGES_IN_THREADS if channel.type in (10, 11, 12) else Perm.SEND_MESSAGES
            if not perms & needed or (ctx.files and not perms & Perm.ATTACH_FILES):
                return _error(403, ErrorCode.MISSING_PERMISSIONS, "Missing Permissions")
            if payload.get("embeds") and not perms & Perm.EMBED_LINKS:
                payload["embeds"] = []  # Discord drops embeds the bot may not post
        too_big = self._check_files(ctx.files, self._upload_limit_for(guild, None))
        if too_big is not None:
            return too_big
        revision = self._new_revision(None, payload, ctx.files, cid, ctx.rec.route)
        if isinstance(revision, web.Response):
            return revision
        reference = payload.get("message_reference")
        message = self._create_message(
            channel_id=cid,
            guild_id=guild.id if guild else None,
            revision=revision,
            type=19 if reference else 0,
            reference=reference,
        )
        await self._announce(message, "MESSAGE_CREATE")
        return _json_response(message.payload())

    def _channel_message(self, ctx: _Ctx) -> FakeMessage | web.Response:
        cid = int(ctx.params["channel_id"])
        channel, guild = self._find_channel(cid)
        if channel is None:
            return _error(404, ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")
        if guild is not None and not guild.channel_permissions(self.bot_user.id, cid) & Perm.VIEW_CHANNEL:
            return _error(403, ErrorCode.MISSING_ACCESS, "Missing Access")
        message = self.messages.get(int(ctx.params["message_id"]))
        if message is None or message.channel_id != cid or message.deleted or message.ephemeral:
            return _error(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def _get_channel_message(self, ctx: _Ctx) -> web.Response:
        message = self._channel_message(ctx)
        if isinstance(message, web.Response):
            return message
        return _json_response(message.payload())

    async def _patch_channel_message(self, ctx: _Ctx) -> web.Response:
        message = self._channel_message(ctx)
        if isinstance(message, web.Response):
            return message
        if message.author.id != self.bot_user.id:
            return _error(403, ErrorCode.CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user")
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        too_big = self._check_files(ctx.files, self._upload_limit_for(guild, None))
        if too_big is not None:
            return too_big
        return await self._edit(message, ctx)

    async def _edit(self, message: FakeMessage, ctx: _Ctx) -> web.Response:
        revision = self._new_revision(message.current, ctx.json or {}, ctx.files, message.channel_id, ctx.rec.route)
        if isinstance(revision, web.Response):
            return revision
        revision.flags &= ~MessageFlag.LOADING
        message.history.append(revision)
        if message.interaction is not None and message is message.interaction.message:
            message.interaction.edits.append(revision)
        await self._announce(message, "MESSAGE_UPDATE")
        return _json_response(message.payload())

    async def _delete_channel_message(self, ctx: _Ctx) -> web.Response:
        message = self._channel_message(ctx)
        if isinstance(message, web.Response):
            return message
        if message.author.id != self.bot_user.id and message.guild_id is not None:
            perms = self.guilds[message.guild_id].channel_permissions(self.bot_user.id, message.channel_id)
            if not perms & Perm.MANAGE_MESSAGES:
                return _error(403, ErrorCode.MISSING_PERMISSIONS, "Missing Permissions")
        message.deleted = True
        await self._announce(message, "MESSAGE_DELETE")
        return web.Response(status=204)

    # ------------------------------------------------------------------ REST: interactions

    async def _interaction_callback(self, ctx: _Ctx) -> web.Response:
        fi = self._interactions_by_token.get(ctx.params["token"])
        if fi is None or str(fi.id) != ctx.params["interaction_id"] or fi.expired:
            return _error(404, ErrorCode.UNKNOWN_INTERACTION, "Unknown interaction")
        if fi.callbacks:
            return _error(400, ErrorCode.ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        body = ctx.json or {}
        cb_type = int(body.get("type", 0))
        data = body.get("data")
        allowed = {
            InteractionType.APPLICATION_COMMAND: {4, 5, 9, 12},
            InteractionType.MESSAGE_COMPONENT: {4, 5, 6, 7, 9, 12},
            InteractionType.AUTOCOMPLETE: {8},
            InteractionType.MODAL_SUBMIT: {4, 5, 6, 7},
        }[fi.type]
        if cb_type not in allowed:
            return _form_error(
                {
                    "type": _field_error(
                        "INTERACTION_RESPONSE_TYPE_INVALID", f"Callback type {cb_type} is invalid for this interaction."
                    )
                }
            )
        guild = self.guilds.get(fi.guild_id) if fi.guild_id else None
        too_big = self._check_files(ctx.files, self._upload_limit_for(guild, fi))
        if too_big is not None:
            return too_big
        if cb_type == CallbackType.AUTOCOMPLETE_RESULT:
            choices = (data or {}).get("choices", [])
            errors = {}
            if len(choices) > 25:
                errors["choices"] = _field_error("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
            for index, choice in enumerate(choices[:25]):
                if not 1 <= len(str(choice.get("name", ""))) <= 100:
                    errors.update(
                        _nest(
                            ["choices", index, "name"],
                            _field_error("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."),
                        )
                    )
            if errors:
                return _form_error({"data": errors})
        resource: dict[str, Any] = {"type": cb_type}
        message: FakeMessage | None = None
        if cb_type in (CallbackType.CHANNEL_MESSAGE, CallbackType.DEFERRED_CHANNEL_MESSAGE):
            if cb_type == CallbackType.CHANNEL_MESSAGE:
                revision = self._new_revision(None, data or {}, ctx.files, fi.channel_id, ctx.rec.route)
                if isinstance(revision, web.Response):
                    return revision
            else:
                flags = MessageFlag.LOADING | (int((data or {}).get("flags", 0)) & MessageFlag.EPHEMERAL)
                revision = MessageRevision("", [], [], [], flags, None, _now(), payload=data, route=ctx.rec.route)
            message = self._create_message(
                channel_id=fi.channel_id,
                guild_id=fi.guild_id,
                revision=revision,
                type=20 if fi.type in (2, 4) else 19,
                interaction=fi,
            )
            fi.message = message
            await self._announce(message, "MESSAGE_CREATE")
        elif cb_type in (CallbackType.DEFERRED_UPDATE_MESSAGE, CallbackType.UPDATE_MESSAGE):
            source = fi.source_message
            if source is None:
                return _form_error({"type": _field_error("INTERACTION_RESPONSE_TYPE_INVALID", "No message.")})
            fi.message = source
            if cb_type == CallbackType.UPDATE_MESSAGE:
                revision = self._new_revision(source.current, data or {}, ctx.files, source.channel_id, ctx.rec.route)
                if isinstance(revision, web.Response):
                    return revision
                source.history.append(revision)
                fi.edits.append(revision)
                await self._announce(source, "MESSAGE_UPDATE")
            message = source
        fi.callbacks.append(Callback(type=cb_type, data=copy.deepcopy(data), files=list(ctx.files)))
        with_response = ctx.rec.query.get("with_response") in ("1", "true", "True")
        if cb_type in (CallbackType.AUTOCOMPLETE_RESULT, CallbackType.PONG) or not with_response:
            return web.Response(status=204)
        info: dict[str, Any] = {"id": str(fi.id), "type": fi.type}
        if message is not None:
            info.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            if cb_type != CallbackType.DEFERRED_UPDATE_MESSAGE:
                resource["message"] = message.payload()
        result: dict[str, Any] = {"interaction": info}
        if cb_type != CallbackType.DEFERRED_UPDATE_MESSAGE:
            result["resource"] = resource
        return _json_response(result)

    def _webhook_interaction(self, ctx: _Ctx) -> FakeInteraction | web.Response:
        fi = self._interactions_by_token.get(ctx.params["token"])
        if fi is None or int(ctx.params["application_id"]) != fi.application_id:
            return _error(404, ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")
        if fi.expired:
            return _error(401, ErrorCode.INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return fi

    def _webhook_message(self, ctx: _Ctx, fi: FakeInteraction) -> FakeMessage | web.Response:
        ref = ctx.params["message_id"]
        if ref == "@original":
            message = fi.message
        else:
            mid = int(ref)
            candidates = [m for m in [fi.message, *fi.followups] if m is not None]
            message = next((m for m in candidates if m.id == mid), None)
        if message is None or message.deleted:
            return _error(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def _post_followup(self, ctx: _Ctx) -> web.Response:
        fi = self._webhook_interaction(ctx)
        if isinstance(fi, web.Response):
            return fi
        if not fi.callbacks:
            return _error(404, ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")
        guild = self.guilds.get(fi.guild_id) if fi.guild_id else None
        too_big = self._check_files(ctx.files, self._upload_limit_for(guild, fi))
        if too_big is not None:
            return too_big
        payload = ctx.json or {}
        original = fi.message
        if original is not None and original.loading and original.interaction is fi:
            # The first follow-up after a deferred ("thinking") response replaces the loading message; its
            # own ephemeral flag is ignored.
            payload = {k: v for k, v in payload.items() if k != "flags"}
            revision = self._new_revision(original.current, payload, ctx.files, fi.channel_id, ctx.rec.route)
            if isinstance(revision, web.Response):
                return revision
            revision.flags &= ~MessageFlag.LOADING
            original.history.append(revision)
            fi.edits.append(revision)
            fi.followups.append(original)
            await self._announce(original, "MESSAGE_UPDATE")
            message = original
        else:
            revision = self._new_revision(None, payload, ctx.files, fi.channel_id, ctx.rec.route)
            if isinstance(revision, web.Response):
                return revision
            message = self._create_message(
                channel_id=fi.channel_id,
                guild_id=fi.guild_id,
                revision=revision,
                type=20 if fi.type == 2 else 19,
                interaction=fi,
            )
            fi.followups.append(message)
            await self._announce(message, "MESSAGE_CREATE")
        if ctx.rec.query.get("wait") in ("1", "true", "True"):
            return _json_response(message.payload())
        return web.Response(status=204)

    async def _get_webhook_message(self, ctx: _Ctx) -> web.Response:
        fi = self._webhook_interaction(ctx)
        if isinstance(fi, web.Response):
            return fi
        message = self._webhook_message(ctx, fi)
        if isinstance(message, web.Response):
            return message
        return _json_response(message.payload())

    async def _patch_webhook_message(self, ctx: _Ctx) -> web.Response:
        fi = self._webhook_interaction(ctx)
        if isinstance(fi, web.Response):
            return fi
        message = self._webhook_message(ctx, fi)
        if isinstance(message, web.Response):
            return message
        guild = self.guilds.get(fi.guild_id) if fi.guild_id else None
        too_big = self._check_files(ctx.files, self._upload_limit_for(guild, fi))
        if too_big is not None:
            return too_big
        revision = self._new_revision(message.current, ctx.json or {}, ctx.files, message.channel_id, ctx.rec.route)
        if isinstance(revision, web.Response):
            return revision
        revision.flags &= ~MessageFlag.LOADING
        message.history.append(revision)
        if message is fi.message:
            fi.edits.append(revision)
        await self._announce(message, "MESSAGE_UPDATE")
        return _json_response(message.payload())

    async def _delete_webhook_message(self, ctx: _Ctx) -> web.Response:
        fi = self._webhook_interaction(ctx)
        if isinstance(fi, web.Response):
            return fi
        message = self._webhook_message(ctx, fi)
        if isinstance(message, web.Response):
            return message
        message.deleted = True
        await self._announce(message, "MESSAGE_DELETE")
        return web.Response(status=204)


# --------------------------------------------------------------------------------------------------
# Validation


def _infer_option_type(value: Any) -> int:
    if isinstance(value, bool):
        return OptionType.BOOLEAN
    if isinstance(value, int):
        return OptionType.INTEGER
    if isinstance(value, float):
        return OptionType.NUMBER
    if isinstance(value, FakeMember | FakeUser):
        return OptionType.USER
    if isinstance(value, FakeRole):
        return OptionType.ROLE
    if isinstance(value, FakeChannel):
        return OptionType.CHANNEL
    if isinstance(value, FakeAttachment | bytes | tuple):
        return OptionType.ATTACHMENT
    return OptionType.STRING


_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


def _validate_command(command: dict[str, Any], index: int) -> dict[str, Any]:
    """Discord's main checks on a command payload; errors in its nested format."""
    errors: dict[str, Any] = {}

    def fail(path: list[str | int], code: str, message: str) -> None:
        node = errors.setdefault(str(index), {})
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = _field_error(code, message)

    def check_options(options: list[dict[str, Any]], path: list[str | int]) -> None:
        if len(options) > 25:
            fail([*path, "options"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        seen_optional = False
        names = set()
        for i, option in enumerate(options):
            where = [*path, "options", i]
            name = option.get("name", "")
            if not _COMMAND_NAME.match(name) or name != name.lower():
                fail([*where, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
            if name in names:
                fail([*where, "name"], "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Duplicate name")
            names.add(name)
            if not 1 <= len(option.get("description", "")) <= 100:
                fail([*where, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
            if option.get("type") in (1, 2):
                check_options(option.get("options", []), where)
                continue
            if option.get("required"):
                if seen_optional:
                    fail(
                        [*where, "required"],
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            if len(option.get("choices") or []) > 25:
                fail([*where, "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
            if option.get("choices") and option.get("autocomplete"):
                fail([*where, "autocomplete"], "AUTOCOMPLETE_AND_CHOICES", "Autocomplete cannot be used with choices")

    name = command.get("name", "")
    ctype = command.get("type", 1)
    if ctype == 1:
        if not _COMMAND_NAME.match(name) or name != name.lower():
            fail(["name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        if not 1 <= len(command.get("description", "")) <= 100:
            fail(["description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        check_options(command.get("options", []), [])
    elif not 1 <= len(name) <= 32:
        fail(["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
    return errors


def _validate_message(payload: dict[str, Any]) -> dict[str, Any]:
    """Discord's length limits on message content, embeds and components."""
    errors: dict[str, Any] = {}
    content = payload.get("content")
    if content and len(content) > 2000:
        errors["content"] = _field_error("BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        errors["embeds"] = _field_error("BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    total = 0
    limits = {"title": 256, "description": 4096}
    for i, embed in enumerate(embeds):
        for key, limit in limits.items():
            text = embed.get(key) or ""
            total += len(text)
            if len(text) > limit:
                errors.update(
                    _nest(
                        ["embeds", i, key], _field_error("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
                    )
                )
        fields = embed.get("fields") or []
        if len(fields) > 25:
            errors.update(_nest(["embeds", i, "fields"], _field_error("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")))
        for j, fld in enumerate(fields):
            total += len(fld.get("name", "")) + len(fld.get("value", ""))
            if len(fld.get("name", "")) > 256 or len(fld.get("value", "")) > 1024:
                errors.update(
                    _nest(
                        ["embeds", i, "fields", j],
                        _field_error("BASE_TYPE_MAX_LENGTH", "Field name must be 256, value 1024 or fewer in length."),
                    )
                )
        footer = (embed.get("footer") or {}).get("text") or ""
        author = (embed.get("author") or {}).get("name") or ""
        total += len(footer) + len(author)
        if len(footer) > 2048:
            errors.update(_nest(["embeds", i, "footer", "text"], _field_error("BASE_TYPE_MAX_LENGTH", "Too long.")))
        if len(author) > 256:
            errors.update(_nest(["embeds", i, "author", "name"], _field_error("BASE_TYPE_MAX_LENGTH", "Too long.")))
    if total > 6000:
        errors["embeds"] = _field_error("MESSAGE_EMBEDS_TOO_LONG", "Embeds exceed 6000 characters in total.")
    components = payload.get("components") or []
    v2 = bool(int(payload.get("flags") or 0) & MessageFlag.IS_COMPONENTS_V2)
    if not v2 and len(components) > 5:
        errors["components"] = _field_error("BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
    seen: set[str] = set()
    for component in _walk_components(components):
        custom_id = component.get("custom_id")
        if custom_id is not None:
            if len(custom_id) > 100:
                errors["components"] = _field_error("BASE_TYPE_MAX_LENGTH", "custom_id must be 100 or fewer.")
            if custom_id in seen:
                errors["components"] = _field_error(
                    "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
                )
            seen.add(custom_id)
        if component.get("type") == 1 and len(component.get("components", [])) > 5:
            errors["components"] = _field_error("BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        if component.get("label") and len(component["label"]) > 80:
            errors["components"] = _field_error("BASE_TYPE_MAX_LENGTH", "label must be 80 or fewer.")
    return errors


__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_UPLOAD_LIMIT",
    "Callback",
    "CallbackType",
    "CommandSync",
    "ErrorCode",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordTimeout",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "Fault",
    "GatewayConnection",
    "Intent",
    "InteractionType",
    "MessageFlag",
    "MessageRevision",
    "OptionType",
    "Perm",
    "RecordedRequest",
    "UploadedFile",
    "sniff_content_type",
]
