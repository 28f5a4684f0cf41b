"""The schedule tables next to the model (tuning.schedule_tables): written, looked up by NFE, options
or step count, and refused in one line when made for another model, sampler or NFE. `gmm`: conftest's
mixture."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fewstep import samplers
from fewstep.tuning import schedule_tables

GRID = [20.0, 5.0, 1.0, 0.2, 0.0]


def test_within_a_budget_the_grid_with_the_lowest_held_out_error_is_taken(gmm, tmp_path):
    path = tmp_path / "heun.json"
    for nfe, grid, error in ((3, [20.0, 1.0, 0.0], 0.2), (4, [20.0, 1.0, 0.01], 0.5), (5, [20.0, 3.0, 0.5, 0.0], 0.1)):
        schedule_tables.write(path, gmm, "heun", {}, "gmm", "ode_error", nfe, grid, held_out_ode_error=error)
    assert schedule_tables.best_within(path, gmm, "heun", {}, 4)[0] == 3  # Heun's even NFE did worse
    assert schedule_tables.best_within(path, gmm, "heun", {}, 9)[0] == 5
    assert schedule_tables.best_within(path, gmm, "heun", {}, 2) is None


def test_a_table_gives_back_its_grid_and_refuses_another_model_sampler_or_nfe(gmm, tmp_path):
    path = tmp_path / "ddim.json"
    schedule_tables.write(path, gmm, "ddim", {"eta": 0.0}, "gmm", "ode_error", 4, GRID, command="by hand")
    schedule_tables.write(path, gmm, "ddim", {"eta": 0.0}, "gmm", "ode_error", 2, [20.0, 1.0, 0.0])
    schedule_tables.write(path, gmm, "ddim", {}, "gmm", "ode_error", 10, [20.0 * 0.5 ** k for k in range(10)] + [0.0])
    assert schedule_tables.lookup(path, gmm, "ddim", {"eta": 0.0}, 4).tolist() == GRID
    assert sorted(schedule_tables.entries(path)) == [2, 4, 10]
    assert schedule_tables.entries(tmp_path / "none.json") == {}
    other = samplers.GMMDenoiser(means=[[0.0, 0.0]], stds=[1.0])
    mine, theirs = samplers.fingerprint(gmm), samplers.fingerprint(other)
    for call, message in [
            (lambda: schedule_tables.lookup(path, gmm, "ddim", {"eta": 0.0}, 5),
             f"{path} has no grid for NFE 5: it has NFE 2, 4, 10"),  # in numeric order
            (lambda: schedule_tables.lookup(path, gmm, "euler", {}, 4),
             f"{path} holds grids of sampler ddim {{}}, not of euler {{}}"),
            (lambda: schedule_tables.lookup(path, gmm, "ddim", {"eta": 0.5}, 4),
             f"{path} holds grids of sampler ddim {{}}, not of ddim {{'eta': 0.5}}"),
            (lambda: schedule_tables.lookup(path, other, "ddim", {"eta": 0.0}, 4),
             f"{path} was searched for another model (gmm, weights {mine}); this one's weights are {theirs}: search it "
             f"again (scripts/search_schedule.py)")]:
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message
    before = path.read_bytes()
    with pytest.raises(ValueError, match="another model or sampler"):
        schedule_tables.write(path, other, "ddim", {"eta": 0.0}, "other", "ode_error", 3, GRID[1:])
    assert path.read_bytes() == before  # nothing already written is lost


def test_a_table_is_looked_up_with_the_samplers_options(gmm, tmp_path):
    """euler with afs: the grid of 4 steps costs 3 NFE, so the table's NFE 3 is that grid."""
    path = tmp_path / "euler.json"
    schedule_tables.write(path, gmm, "euler", {"afs": True}, "gmm", "ode_error", 3, GRID, held_out_ode_error=0.1)
    assert schedule_tables.lookup(path, gmm, "euler", {"afs": True}, 3).tolist() == GRID
    assert schedule_tables.best_within(path, gmm, "euler", {"afs": True}, 3)[1].tolist() == GRID
    table = json.loads(path.read_text())
    table["by_nfe"]["3"]["sigmas"] = [20.0, 1.0, 0.2, 0.0]
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError) as error:
        schedule_tables.lookup(path, gmm, "euler", {"afs": True}, 3)
    assert str(error.value) == f"{path} NFE 3: its grid of 3 steps costs euler 2 NFE, not 3"


def test_a_best_entry_ties_to_the_larger_nfe_and_an_unmeasured_one_comes_last(gmm, tmp_path):
    path = tmp_path / "heun.json"
    for nfe, grid, error in ((3, [20.0, 1.0, 0.0], 0.2), (5, [20.0, 3.0, 0.5, 0.0], 0.2), (7, GRID, None)):
        details = {} if error is None else {"held_out_ode_error": error}
        schedule_tables.write(path, gmm, "heun", {}, "gmm", "ode_error", nfe, grid, **details)
    assert schedule_tables.best_within(path, gmm, "heun", {}, 9)[0] == 5


def test_a_table_file_that_is_not_a_table_is_refused_naming_it(tmp_path):
    path = tmp_path / "t.json"
    for text, reason in (("{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
                         ("[1]", "it lacks all keys"), ('{"sampler": "heun", "options": {}}', "it lacks by_nfe, fingerprint")):
        path.write_text(text)
        with pytest.raises(ValueError) as error:
            schedule_tables.load(path)
        assert str(error.value) == f"{path} is no schedule table: {reason}"
    with pytest.raises(FileNotFoundError) as error:
        schedule_tables.load(tmp_path / "none.json")
    assert str(error.value) == f"no schedule table at {tmp_path / 'none.json'}"


def test_a_grid_may_start_at_sigma_max_to_rounding_and_not_above():
    assert schedule_tables.check_start([80.0, 1.0, 0.0], 80.0, "g", "the model's").tolist() == [80.0, 1.0, 0.0]
    assert schedule_tables.check_start([80.0 * (1 + 1e-12), 1.0, 0.0], 80.0, "g", "the model's")[0] > 80.0
    with pytest.raises(ValueError) as error:
        schedule_tables.check_start([80.001, 1.0, 0.0], 80.0, "g", "the model's")
    assert str(error.value) == "g starts at sigma 80.001, above the model's sigma_max 80"


def test_a_model_not_loaded_from_a_directory_has_no_table_of_its_own(gmm):
    assert schedule_tables.default_path(gmm, "heun") is None


def test_a_written_table_holds_the_sampler_its_changed_options_the_model_and_the_grids_by_nfe(gmm, tmp_path):
    path = tmp_path / "a" / "b" / "euler.json"  # folders made
    for nfe, grid in ((10, GRID), (9, GRID[1:])):
        schedule_tables.write(path, gmm, "euler", {"afs": True}, "gmm", "ode_error", nfe, grid, note=nfe)
    text = path.read_text()
    assert text.startswith('{\n "sampler": "euler",\n "options": {\n  "afs": true\n }')  # indent 1
    assert json.loads(text) == {
        "sampler": "euler", "options": {"afs": True}, "model": "gmm", "fingerprint": samplers.fingerprint(gmm),
        "objective": "ode_error", "by_nfe": {"9": {"sigmas": GRID[1:], "note": 9}, "10": {"sigmas": GRID, "note": 10}}}
    assert list(json.loads(text)["by_nfe"]) == ["9", "10"]  # in numeric order
    with pytest.raises(ValueError) as error:
        schedule_tables.write(path, gmm, "euler", {}, "gmm", "ode_error", 4, GRID)
    assert str(error.value) == (f"{path} holds grids of another model or sampler (gmm euler {{'afs': True}}); "
                                "write to another table=")


def test_a_grid_by_step_count_names_the_table_and_what_it_lacks(gmm, tmp_path):
    path = tmp_path / "heun.json"
    for nfe, grid in ((3, [20.0, 1.0, 0.0]), (5, [20.0, 3.0, 0.5, 0.0])):
        schedule_tables.write(path, gmm, "heun", {}, "gmm", "ode_error", nfe, grid)
    assert schedule_tables.grid_of_steps(path, "heun", {}, 3, 80.0).tolist() == [20.0, 3.0, 0.5, 0.0]
    for call, message in [
            (lambda: schedule_tables.grid_of_steps(path, "heun", {}, 4, 80.0), f"{path} has no grid of 4 steps: it has 2, 3"),
            (lambda: schedule_tables.grid_of_steps(path, "heun", {}, 2, 10.0),
             f"{path}'s grid of 2 steps starts at sigma 20, above this scheduler's sigma_max 10")]:
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} "):
        schedule_tables.grid_of_steps(path, "euler", {}, 2, 80.0)


def test_a_table_named_like_a_shipped_model_is_the_local_one_only_if_it_holds_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = schedule_tables.table_file("digits_ddpm", "heun")
    assert shipped.parent.parent.name == "digits_ddpm" and shipped.parent.parent.is_absolute()
    Path("digits_ddpm").mkdir()  # a run folder of that name holds no tables: the shipped model's
    assert schedule_tables.table_file("digits_ddpm", "heun") == shipped
    Path("digits_ddpm", "schedules").mkdir()
    assert schedule_tables.table_file("digits_ddpm", "heun") == Path("digits_ddpm", "schedules", "heun.json")
    Path("digits_ddpm", "schedules").rmdir()
    Path("digits_ddpm").rmdir()
    Path("digits_ddpm").write_text("{}")  # a file of that name is the table itself
    assert schedule_tables.table_file("digits_ddpm", "heun") == Path("digits_ddpm")


@pytest.mark.parametrize("grid, message", [([20.0, 5.0, 5.0, 0.2, 0.0], "strictly decreasing"),
                                           ([200.0, 5.0, 1.0, 0.2, 0.0], "{path} NFE 4 starts at sigma 200, above the model's sigma_max 80"),
                                           ([20.0, 5.0, 1.0, 0.0], "{path} NFE 4: its grid of 3 steps costs ddim 3 NFE, not 4")])
def test_a_table_with_a_grid_the_model_cannot_take_is_refused(gmm, tmp_path, grid, message):
    path = tmp_path / "ddim.json"
    schedule_tables.write(path, gmm, "ddim", {}, "gmm", "ode_error", 4, GRID)
    table = json.loads(path.read_text())
    table["by_nfe"]["4"]["sigmas"] = grid
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError) as error:
        schedule_tables.lookup(path, gmm, "ddim", {}, 4)
    assert message.format(path=path) in str(error.value)
