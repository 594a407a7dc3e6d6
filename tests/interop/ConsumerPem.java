import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.PKCS8EncodedKeySpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.Base64;

/**
 * The PEM handling every Java tutorial shows: drop the BEGIN/END lines, Base64-decode the
 * rest, X509EncodedKeySpec / PKCS8EncodedKeySpec into KeyFactory. No PEM library.
 *
 * <p>args: keyFactory ("EC", "RSA", "Ed25519"), signature algorithm, message file,
 * signature file (made by the test with the active private key), active.key, then every
 * public &lt;kid&gt;.pem, the active key's first. Verifies the test's signature with the
 * first public key, signs the message with active.key and verifies that too. Prints
 * "verified N" (N public keys loaded); any failure is an exception and exit status 1.
 */
public final class ConsumerPem {
    private ConsumerPem() {}

    static byte[] der(Path path, String label) throws Exception {
        String pem = Files.readString(path, StandardCharsets.US_ASCII);
        String body = pem.replace("-----BEGIN " + label + "-----", "")
                .replace("-----END " + label + "-----", "")
                .replaceAll("\\s", "");
        return Base64.getDecoder().decode(body);
    }

    public static void main(String[] args) throws Exception {
        KeyFactory factory = KeyFactory.getInstance(args[0]);
        String algorithm = args[1];
        byte[] message = Files.readAllBytes(Path.of(args[2]));
        byte[] signature = Files.readAllBytes(Path.of(args[3]));
        PrivateKey privateKey =
                factory.generatePrivate(new PKCS8EncodedKeySpec(der(Path.of(args[4]), "PRIVATE KEY")));
        PublicKey first = null;
        int loaded = 0;
        for (int i = 5; i < args.length; i++) {
            PublicKey key =
                    factory.generatePublic(new X509EncodedKeySpec(der(Path.of(args[i]), "PUBLIC KEY")));
            if (first == null) {
                first = key;
            }
            loaded++;
        }
        Signature verifier = Signature.getInstance(algorithm);
        verifier.initVerify(first);
        verifier.update(message);
        if (!verifier.verify(signature)) {
            throw new IllegalStateException("the test's signature does not verify");
        }
        Signature signer = Signature.getInstance(algorithm);
        signer.initSign(privateKey);
        signer.update(message);
        byte[] own = signer.sign();
        verifier.initVerify(first);
        verifier.update(message);
        if (!verifier.verify(own)) {
            throw new IllegalStateException("active.key's signature does not verify");
        }
        System.out.println("verified " + loaded);
    }
}
