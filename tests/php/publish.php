<?php
// Publishes through Symfony's Mercure component (Debian's php-symfony-mercure) as a Symfony or
// API Platform app does, with the JWT it is given: php publish.php HUB_URL JWT
// Prints the id of each update, one per line; a refused publish prints "refused: <reason>".

require_once 'Symfony/Component/Mercure/autoload.php';

use Symfony\Component\Mercure\Hub;
use Symfony\Component\Mercure\Jwt\StaticTokenProvider;
use Symfony\Component\Mercure\Update;

[, $url, $jwt] = $argv;
$hub = new Hub($url, new StaticTokenProvider($jwt));
$updates = [
    new Update(
        ['https://example.com/books/1', 'https://example.com/alternate'],
        json_encode(['title' => "A book\n\nwith a blank line"]),
        true,
        null,
        'book.updated',
        5000
    ),
    new Update('https://example.com/books/2', 'public', false, 'symfony-2'),
];
foreach ($updates as $update) {
    try {
        echo $hub->publish($update), "\n";
    } catch (\Throwable $e) {
        echo 'refused: ', $e->getMessage(), "\n";
    }
}
