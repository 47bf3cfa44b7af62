// MongoPeer runs mongo-java-server's in-memory backend on 127.0.0.1:PORT until it is
// signalled: the MongoDB-wire test peer of scripts/peers.sh (peers_start_mongojava).
//
//   java -cp "$(cat classpath)" MongoPeer.java PORT
//
// The server announces MongoDB 4.4 (wire version 9), the oldest release the Go driver v2
// accepts: mongo-java-server's own version constants stop at wire version 8, which the
// driver refuses. halt-envoy's MongoDB store uses only commands 4.4 has.
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import java.util.List;

public class MongoPeer {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: MongoPeer PORT");
            System.exit(2);
        }
        MongoVersion v44 = new MongoVersion() {
            @Override
            public List<Integer> getVersionArray() {
                return List.of(4, 4, 0);
            }

            @Override
            public int getWireVersion() {
                return 9;
            }
        };
        MongoServer server = new MongoServer(new MemoryBackend().version(v44));
        server.bind("127.0.0.1", Integer.parseInt(args[0]));
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        System.out.println("mongo-java-server listening on 127.0.0.1:" + args[0]);
        Thread.currentThread().join();
    }
}
