"""A site file together with the device profiles its Modbus devices name.

The site model cannot know which profiles exist (they are data files, and a
site may bring its own), so this second step checks every ``profile = ...``
reference once the profiles are loaded: an unknown profile, a profile for
another kind of device, or a cabinet with more compartments than its map
fails at start like any other site-file error, with the field path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.site import Site, SiteError, load_site
from drivers.modbus_profile import Profile, ProfileError, load_profiles


@dataclass(frozen=True, slots=True)
class SiteWithProfiles:
    site: Site
    profiles: dict[str, Profile]


def load_site_with_profiles(path: str | Path) -> SiteWithProfiles:
    site = load_site(path)
    return SiteWithProfiles(site, profiles_for(site, Path(path)))


def profiles_for(site: Site, site_path: Path) -> dict[str, Profile]:
    """The profiles ``site`` may use, checked against its devices; raises SiteError."""
    source = str(site_path)
    directories = [site_path.parent / directory for directory in site.modbus.profile_dirs]
    try:
        profiles = load_profiles(directories)
    except ProfileError as error:
        raise SiteError(source, [(where, reason) for where, reason in error.problems]) from None
    problems: list[tuple[str, str]] = []
    for index, device in enumerate(site.devices):
        if device.profile is None:
            continue
        where = f"devices[{index}].profile"
        profile = profiles.get(device.profile)
        if profile is None:
            known = ", ".join(sorted(profiles))
            problems.append((where, f"no profile {device.profile!r} (known: {known})"))
        elif profile.kind is not device.kind:
            problems.append(
                (
                    where,
                    f"{profile.id} is for {profile.kind.value} devices, not {device.kind.value}",
                )
            )
        elif profile.compartments is not None and device.compartments > profile.compartments:
            problems.append(
                (
                    f"devices[{index}].compartments",
                    f"{profile.id} covers {profile.compartments} compartments, "
                    f"not {device.compartments}",
                )
            )
    if problems:
        raise SiteError(source, problems)
    return profiles
