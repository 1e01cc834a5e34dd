-- wrk script for POST /tts: the bodies prebuilt by bench/bodies.py in bench/bodies/tts
-- (pass another folder after --). Everything else is in post_bodies.lua.
bodies_dir = "bench/bodies/tts"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post_bodies.lua")
