"""The controls admins of similar products asked for, end to end on real slapd (and Samba where
AD differs) and the Jira emulator: the crop, the preview, exclusions, what happens when a photo
is removed from the directory, and photos served over HTTP."""
from __future__ import annotations

import pytest

from tests import photos
from tests.helpers import make_settings, slapd_directory
from tests.photos import BLUE, RED

WHITE = (255, 255, 255)


@pytest.fixture
def controls(tmp_path, slapd, ldap_ou, jira, services_for):
    """``controls(**settings)``: services on slapd's ``ldap_ou`` and the emulator."""
    def build(directories=None, **extra):
        settings = make_settings(tmp_path, jira.url, directories or [slapd_directory(slapd, ldap_ou)], **extra)
        return services_for(settings)
    return build


def portrait() -> bytes:
    """A tall photo whose head (a white band) is near the top: a centred square cuts it off."""
    im = photos.quadrants(200, 400)
    im.paste(WHITE, (0, 10, 200, 30))
    return photos.encode(im, "JPEG")


def test_upper_crop_uploads_the_top_of_a_tall_portrait(controls, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "tall", jpeg_photo=portrait())
    slapd.add_user(ldap_ou, "wide", jpeg_photo=photos.photo(400, 200))
    jira.state.add_user("tall")
    jira.state.add_user("wide")
    services = controls(crop="upper")
    assert services.syncer.sync_user("tall").outcome == "updated"
    shown = jira.state.selected_avatar("tall").image.convert("RGB")
    assert photos.close(shown.getpixel((100, 20)), WHITE) and photos.close(shown.getpixel((50, 195)), RED)
    assert services.syncer.sync_user("wide").outcome == "updated"
    c = photos.corners(jira.state.selected_avatar("wide").png)  # a wide photo: centred as ever
    assert photos.close(c["bl"], BLUE)
