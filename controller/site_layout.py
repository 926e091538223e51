"""The status page's floor map: where each room's tile goes.

Rooms with a ``position`` in the site file sit where it says. Rooms without
one are laid out on a grid in the order of the site file, ``GRID_COLUMNS``
wide, below whatever is placed on the first floor, so that a site file
without any positions still gets a readable map and a half-finished one
loses no room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.site import Site

GRID_COLUMNS = 4


@dataclass(frozen=True, slots=True)
class Tile:
    room: str
    floor: int
    x: int
    y: int
    w: int
    h: int
    placed: bool  # from the site file (False: put on the grid)

    def to_json(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "x": self.x,
            "y": self.y,
            "w": self.w,
            "h": self.h,
            "placed": self.placed,
        }


def floor_plan(site: Site) -> dict[str, Tile]:
    """Every room's tile, by room id, in the order of the site file."""
    tiles: dict[str, Tile] = {}
    for room in site.rooms:
        if room.position is not None:
            p = room.position
            tiles[room.id] = Tile(room.id, p.floor, p.x, p.y, p.w, p.h, placed=True)
    lowest = min((tile.floor for tile in tiles.values()), default=1)
    first_free_row = max(
        (tile.y + tile.h for tile in tiles.values() if tile.floor == lowest), default=0
    )
    unplaced = [room.id for room in site.rooms if room.id not in tiles]
    for index, room_id in enumerate(unplaced):
        row, column = divmod(index, GRID_COLUMNS)
        tiles[room_id] = Tile(room_id, lowest, column, first_free_row + row, 1, 1, placed=False)
    return {room.id: tiles[room.id] for room in site.rooms}
