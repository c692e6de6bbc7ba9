-- Integration: a full disk loses nothing (DESIGN §10 "Resource faults";
-- issue 15 item 5).  The spool lives on a 512 KiB tmpfs that the test mounts:
-- filled up, a message gets 452 4.3.1 and leaves no file behind; freed, the
-- next message is stored without a restart; min_free_space refuses MAIL FROM
-- before the disk is full.  Mounting needs root: otherwise the tests are pending.
local moat = require "helpers.moat"

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- File names in a directory (dot files excluded), sorted.
local function names(dir)
  local p = assert(io.popen("ls -1 '" .. dir .. "' 2>/dev/null"))
  local t = {}
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  table.sort(t)
  return t
end

local read = moat.read_file

-- Fill the file system at dir: dd stops at ENOSPC.
local function fill(dir)
  sh("dd if=/dev/zero of='" .. dir .. "/filler' bs=4k 2>/dev/null")
end

local function send(port, data, params)
  local c = moat.client(port)
  assert.equals(250, (c:ehlo()))
  local r = c:transaction({ from = "sender@remote.example", rcpts = { "joe@example.test" },
                            data = data or moat.message("disk"), params = params })
  c:cmd("QUIT")
  c:close()
  return r
end

describe("moat with a full spool disk", function()
  local mnt, spool

  before_each(function()
    if not moat.is_root() then return end
    mnt = moat.tmpdir("diskfull")
    assert(sh("mount -t tmpfs -o size=512k tmpfs '" .. mnt .. "'"), "mount tmpfs on " .. mnt)
    spool = mnt .. "/spool"
  end)

  after_each(function()
    -- moat first: it holds the spool's directories open.
    local ok, err = pcall(moat.stop_all)
    if mnt then
      if not sh("umount '" .. mnt .. "' 2>/dev/null") then sh("umount -l '" .. mnt .. "'") end
      os.remove(mnt)
      mnt = nil
    end
    assert(ok, err)
  end)

  local function start(extra)
    -- The harness's default config names spool_dir itself: spell it all out.
    return moat.start({ config = table.concat({
      'server_name = "mx.example.test"',
      'local_domains = { "example.test" }',
      ('spool_dir = %q'):format(spool),
      'control_socket = "moat.sock"',
      'listener "smtp" { { port = %PORT%, address = "127.0.0.1" } }',
      'policies = { "relay" }',
      extra or "",
    }, "\n") .. "\n" })
  end

  it("answers 452 4.3.1 on a full disk, keeps nothing, and accepts again once space returns", function()
    if not moat.is_root() then pending("needs root to mount a tmpfs for the spool") return end
    local srv = start()
    fill(mnt)

    local r = send(srv.port)
    assert.equals(250, r.mail[1], r.mail[2])
    assert.equals(452, r.final[1], r.final[2])
    assert.truthy(r.final[2]:find("^452 4%.3%.1 Insufficient system storage"), r.final[2])
    assert.same({}, names(spool .. "/new"))
    assert.same({}, names(spool .. "/tmp"))
    assert.is_true(srv:alive())

    -- Space returns: the very next message is stored, complete.
    os.remove(mnt .. "/filler")
    r = send(srv.port, moat.message("after", "the disk has room again\r\n"))
    assert.equals(250, r.final[1], r.final[2])
    assert.truthy(r.id)
    assert.same({ r.id .. ".eml", r.id .. ".env" }, names(spool .. "/new"))
    local eml = read(spool .. "/new/" .. r.id .. ".eml")
    assert.truthy(eml:find("the disk has room again\r\n$"), eml)
    local env = moat.json.decode(read(spool .. "/new/" .. r.id .. ".env"))
    assert.equals("joe@example.test", env.rcpts[1].addr)
    assert.same({}, names(spool .. "/tmp"))
  end)

  it("refuses a message larger than the free space after a partial write, leaving no partial file", function()
    if not moat.is_root() then pending("needs root to mount a tmpfs for the spool") return end
    local srv = start()
    local line = ("x"):rep(998) .. "\r\n"
    local big = moat.message("big", line:rep(700))    -- ~700 KB onto a 512 KiB file system
    local r = send(srv.port, big)
    assert.equals(452, r.final[1], r.final[2])
    assert.truthy(r.final[2]:find("^452 4%.3%.1 "), r.final[2])
    assert.same({}, names(spool .. "/new"))
    assert.same({}, names(spool .. "/tmp"))
    assert.truthy(srv:log():find("event=spool_error", 1, true))

    -- The session and the daemon go on: a small message right after is stored.
    r = send(srv.port)
    assert.equals(250, r.final[1], r.final[2])
    assert.equals(2, #names(spool .. "/new"))

    -- A declared SIZE= that cannot fit is refused at MAIL FROM already.
    r = send(srv.port, nil, "SIZE=" .. #big)
    assert.equals(452, r.mail[1], r.mail[2])
    assert.truthy(r.mail[2]:find("^452 4%.3%.1 Insufficient system storage"), r.mail[2])
  end)

  it("refuses MAIL FROM with 452 4.3.1 below min_free_space, before the disk is full", function()
    if not moat.is_root() then pending("needs root to mount a tmpfs for the spool") return end
    local srv = start("min_free_space = 1\n")     -- 1 MB free wanted, 512 KiB exist
    local c = moat.client(srv.port)
    assert.equals(250, (c:ehlo()))
    local code, text = c:cmd("MAIL FROM:<sender@remote.example>")
    assert.equals(452, code, text)
    assert.truthy(text:find("^452 4%.3%.1 Insufficient system storage"), text)
    -- The session stays usable: RSET and QUIT work, nothing was stored.
    assert.equals(250, (c:cmd("RSET")))
    assert.equals(221, (c:cmd("QUIT")))
    c:close()
    assert.same({}, names(spool .. "/new"))
    assert.truthy(srv:log():find("reason=min_free_space", 1, true))
    local rc, out = srv:ctl("stats")
    assert.equals(0, rc, out)
    assert.truthy(out:find("refused_disk_full_total%s+1"), out)
    assert.is_true(srv:alive())

    -- A reload lowers the margin: the next MAIL FROM is accepted.
    srv:write("moat.conf", (moat.read_file(srv.conf):gsub("min_free_space = 1", "min_free_space = 0")))
    rc, out = srv:ctl("reload")
    assert.equals(0, rc, out)
    assert.equals(250, send(srv.port).final[1])
  end)
end)

describe("moat config: min_free_space", function()
  it("must be a whole number of MB, 0 or more", function()
    local _, conf = moat.prepare({ extra = "min_free_space = -1\n" })
    local rc, _, err = moat.check(conf)
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("min_free_space", 1, true), err)
    _, conf = moat.prepare({ extra = "min_free_space = 100\n" })
    rc, _, err = moat.check(conf)
    assert.equals(0, rc, err)
  end)
end)
