"""/models: the catalog as members see it (price per image, instant or queued, the options each takes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import NO_MENTIONS, locale_of
from bot.generation.catalog import OPTION_NAMES
from bot.messages import text

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot


class ModelsCog(commands.Cog):
    """Model listing for everyone; the admin subcommands of the same group live with it."""

    models = app_commands.Group(
        name="models", description="Image models: list them, or (admins) manage them", guild_only=True
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    @models.command(name="list")
    async def list_models(self, interaction: discord.Interaction[Any]) -> None:
        """List the image models with their price per image and options."""
        locale = locale_of(interaction)
        catalog = self.services.catalog
        policy = await self.services.store.get_policy(interaction.guild_id) if interaction.guild_id else None
        default = (policy.default_model if policy else None) or self.services.settings.default_model
        lines = []
        for spec in catalog.models:
            options = []
            for option in OPTION_NAMES:
                allowed = spec.choices(option, catalog.aspect_ratios)
                if allowed is not None:
                    options.append(f"{option} ({'/'.join(allowed)})")
            if spec.max_images > 1:
                options.append(f"count (1–{spec.max_images})")
            line = text(
                "models.line",
                locale,
                name=spec.name,
                provider=spec.provider,
                price=spec.price,
                mode=text(f"models.{spec.mode}", locale),
                options=", ".join(options) or text("models.no_options", locale),
            )
            if spec.name == default:
                line += " " + text("models.default", locale)
            if policy is not None and not policy.is_model_allowed(spec.name):
                line += " " + text("models.disabled", locale)
            lines.append(line)
        embed = discord.Embed(
            title=text("models.title", locale), description="\n".join(lines)[:4096], colour=discord.Colour.blurple()
        )
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @models.command(name="enable")
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(model="The model to allow on this server")
    async def enable(self, interaction: discord.Interaction[Any], model: str) -> None:
        """Allow a model on this server (admins)."""
        await self._set_allowed(interaction, model, True)

    @models.command(name="disable")
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(model="The model to refuse on this server")
    async def disable(self, interaction: discord.Interaction[Any], model: str) -> None:
        """Refuse a model on this server (admins)."""
        await self._set_allowed(interaction, model, False)

    @models.command(name="default")
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(model="The model /imagine uses when a member picks none")
    async def default(self, interaction: discord.Interaction[Any], model: str) -> None:
        """Set the server's default model (admins)."""
        assert interaction.guild_id is not None
        policy = await self.services.policy.set_default_model(interaction.guild_id, interaction.user.id, model)
        await interaction.response.send_message(
            text("admin.default_model", locale_of(interaction), model=policy.default_model),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    async def _set_allowed(self, interaction: discord.Interaction[Any], model: str, allowed: bool) -> None:
        assert interaction.guild_id is not None
        await self.services.policy.set_model_allowed(interaction.guild_id, interaction.user.id, model, allowed)
        key = "admin.model_enabled" if allowed else "admin.model_disabled"
        await interaction.response.send_message(
            text(key, locale_of(interaction), model=model), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @enable.autocomplete("model")
    @disable.autocomplete("model")
    @default.autocomplete("model")
    async def _model_names(self, interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        return [
            app_commands.Choice(
                name=text("autocomplete.model", locale_of(interaction), name=spec.name, price=spec.price)[:100],
                value=spec.name,
            )
            for spec in self.services.catalog.models
            if needle in spec.name.lower()
        ][:25]


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ModelsCog(bot))
