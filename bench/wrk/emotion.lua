-- wrk script for POST /emotion: the bodies prebuilt by bench/bodies.py in bench/bodies/emotion
-- (pass another folder after --). Everything else is in post_bodies.lua.
bodies_dir = "bench/bodies/emotion"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post_bodies.lua")
