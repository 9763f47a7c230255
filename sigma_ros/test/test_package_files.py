"""package_files: the shipped config and launch files are found, and the Fast DDS profile defers to the user's."""
from pathlib import Path

import pytest

from sigma_ros.package_files import FASTDDS_PROFILE, fastdds_profile_env, share_file

SOURCE = Path(__file__).resolve().parents[1]


SHIPPED = [("config", "sigma.yaml"), ("config", FASTDDS_PROFILE), ("launch", "sigma.launch.py")]


@pytest.mark.parametrize("parts", SHIPPED)
def test_share_file_finds_the_shipped_files(parts):
    path = share_file(*parts)
    assert path.is_file() and path.name == parts[-1]
    assert path.read_bytes() == SOURCE.joinpath(*parts).read_bytes()


def test_share_file_names_a_missing_file_and_where_it_looked():
    with pytest.raises(FileNotFoundError, match=r"config/no_such\.yaml not found in .*sigma_ros"):
        share_file("config", "no_such.yaml")


def test_fastdds_profile_env_sets_the_shipped_profile_unless_the_user_did():
    env = fastdds_profile_env({})
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]) == share_file("config", FASTDDS_PROFILE)
    assert fastdds_profile_env({"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"}) == {}
    assert fastdds_profile_env({"FASTDDS_DEFAULT_PROFILES_FILE": ""}) == env  # empty counts as unset
