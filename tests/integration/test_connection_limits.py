"""Connection caps, counted across all event-loop threads: beyond max_connections_per_ip
from one client address, and beyond max_connections in total, a new connection gets
421 4.7.0 at connect and is closed; other addresses are unaffected by the per-address
cap; a freed slot is usable again. Distinct loopback source addresses (127.0.0.x) stand
for distinct clients."""

import harness
from harness import SmarthostCase


class ConnectionLimits(SmarthostCase):
    def greeted(self, sh, source):
        """A connection from source that got 220, or None if it got 421 4.7.0 (closed)."""
        c = harness.Client(sh.ports["submission"], source=source, context=sh.client_context())
        if c.greeting.code == 220:
            self.addCleanup(c.close)
            return c
        c.expect(c.greeting, 421, "4.7.0")
        self.assertEqual(c.read_until_closed(), [])
        c.close()
        return None

    def hold(self, sh, source):
        """Wait until a connection from source is greeted with 220 (a slot freed just
        before may take a moment to be released) and keep it open."""
        return harness.wait_until(lambda: self.greeted(sh, source), f"a 220 for {source}")

    def refused(self, sh, source):
        c = harness.Client(sh.ports["submission"], source=source, context=sh.client_context())
        self.addCleanup(c.close)
        c.expect(c.greeting, 421, "4.7.0")
        self.assertEqual(c.read_until_closed(), [], c.dialogue())

    def test_per_ip(self):
        sh = self.start_smarthost(config={"limits": {"max_connections_per_ip": 3,
                                                     "max_connections": 1000}})
        held = [self.hold(sh, "127.0.0.3") for _ in range(3)]
        self.refused(sh, "127.0.0.3")
        self.refused(sh, "127.0.0.3")
        # Another client address is not limited by 127.0.0.3's connections.
        other = self.hold(sh, "127.0.0.4")
        other.login("bob", sh.users["bob"])
        other.quit()
        # The held sessions still work, and a freed slot can be used again.
        held[0].cmd("NOOP", 250, "2.0.0")
        held[0].quit()
        again = self.hold(sh, "127.0.0.3")
        again.cmd("NOOP", 250, "2.0.0")

    def test_total(self):
        sh = self.start_smarthost(config={"limits": {"max_connections_per_ip": 100,
                                                     "max_connections": 4}})
        held = [self.hold(sh, f"127.0.0.{10 + i}") for i in range(4)]
        self.refused(sh, "127.0.0.20")
        self.refused(sh, "127.0.0.10")
        held[1].quit()
        self.hold(sh, "127.0.0.20").cmd("NOOP", 250, "2.0.0")
        self.refused(sh, "127.0.0.21")


if __name__ == "__main__":
    harness.main()
