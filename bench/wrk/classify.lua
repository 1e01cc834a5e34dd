-- wrk script for POST /classify: the bodies prebuilt by bench/bodies.py in bench/bodies/classify
-- (pass another folder after --). Everything else is in post_bodies.lua.
bodies_dir = "bench/bodies/classify"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post_bodies.lua")
