"""Certificates: an ECDSA and an RSA certificate configured together ([tls] cert_file /
cert2_file): GnuTLS picks the one the client can verify — a client that offers only RSA
signatures gets the RSA certificate, one that offers only ECDSA gets the ECDSA one; a
server with only an RSA certificate works as well."""

import ssl

import harness
from harness import SmarthostCase, make_message


def der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


class DualCertificates(SmarthostCase):
    def context(self, sh, cafiles, ciphers):
        ctx = harness.client_context(cafiles[0], maximum=ssl.TLSVersion.TLSv1_2)
        for extra in cafiles[1:]:
            ctx.load_verify_locations(extra)
        ctx.set_ciphers(ciphers)
        return ctx

    def presented(self, sh, ctx):
        c = sh.connect(context=ctx)
        c.ehlo()
        c.starttls(ctx)
        cert = c.sock.getpeercert(binary_form=True)
        c.ehlo()
        c.expect(c.auth_plain("alice", sh.users["alice"]), 235, "2.7.0")
        qid = c.submit("alice@example.test", ["dual@example.test"], make_message("dual"))
        c.quit()
        self.assertTrue(sh.message(qid))
        return cert

    def test_ecdsa_and_rsa(self):
        sh = self.start_smarthost(start=False)
        rsa_cert, rsa_key = harness.make_cert(sh.dir, name="rsa", key_type="rsa")
        sh.sections["tls"].update(cert2_file=rsa_cert, key2_file=rsa_key)
        sh.write_config()
        ec_cert = sh.cert
        both = f"{sh.dir}/both.pem"        # clients (and the readiness probe) trust both
        with open(both, "w") as out:
            for path in (ec_cert, rsa_cert):
                with open(path) as f:
                    out.write(f.read())
        sh.cert = both
        sh.start()
        self.assertEqual(self.presented(sh, self.context(sh, [both], "ECDHE-RSA-AES128-GCM-SHA256")),
                         der(rsa_cert))
        self.assertEqual(self.presented(sh, self.context(sh, [both], "ECDHE-ECDSA-AES128-GCM-SHA256")),
                         der(ec_cert))

    def test_rsa_only(self):
        sh = self.start_smarthost(start=False)
        rsa_cert, rsa_key = harness.make_cert(sh.dir, name="rsa", key_type="rsa")
        sh.sections["tls"].update(cert_file=rsa_cert, key_file=rsa_key)
        sh.cert = rsa_cert
        sh.write_config()
        sh.start()
        ctx = sh.client_context()         # default ciphers, TLS 1.3
        self.assertEqual(self.presented(sh, ctx), der(rsa_cert))


if __name__ == "__main__":
    harness.main()
