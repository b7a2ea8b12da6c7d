import psycopg


def test_db_fixture_is_migrated(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        n = conn.execute("SELECT count(*) FROM plant_machine").fetchone()
    assert n is not None and n[0] == 12
