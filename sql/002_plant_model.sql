-- The plant model from config/plant.yaml, mirrored so that SQL users (boards, BI tools)
-- can name machines and reasons. Rewritten by `mesflow db migrate` and at every start.
CREATE TABLE plant_line (
    line      text PRIMARY KEY,
    area      text NOT NULL,
    name_en   text NOT NULL,
    name_zh   text NOT NULL,
    position  int  NOT NULL
);
CREATE TABLE plant_machine (
    machine              text PRIMARY KEY,
    line                 text NOT NULL REFERENCES plant_line ON DELETE CASCADE,
    name_en              text NOT NULL,
    name_zh              text NOT NULL,
    ideal_cycle_seconds  double precision NOT NULL,
    microstop_seconds    double precision NOT NULL,
    position             int  NOT NULL
);
CREATE TABLE reason_code (
    code      text PRIMARY KEY,
    parent    text,
    category  text NOT NULL,
    name_en   text NOT NULL,
    name_zh   text NOT NULL
);
